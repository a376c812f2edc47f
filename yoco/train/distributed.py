"""Process-group setup and model wrapping, applied from outside the model code.

Under ``torchrun`` (``WORLD_SIZE`` > 1) this starts ``torch.distributed`` (NCCL on GPUs, gloo on
CPUs) and wraps the model with DDP or FSDP2 (``fully_shard`` on every decoder layer, then the
root). Alone, it does nothing. All communication is PyTorch's own.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_size() -> int:
    """How many processes this run has (``torchrun`` sets ``WORLD_SIZE``), before ``setup``."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup() -> Dist:
    processes = world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if processes > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Dist(rank, processes, local_rank, device)


def initialized() -> bool:
    """Whether this process is already in a process group (a curriculum sets one up for all
    its stages)."""
    return dist.is_initialized()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, strategy: str, d: Dist) -> torch.nn.Module:
    if not d.enabled:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        from yoco.layers.block import DecoderLayer

        for module in model.modules():
            if isinstance(module, DecoderLayer):
                fully_shard(module)
        fully_shard(model)
        return model
    raise ValueError(f"train.distributed must be 'ddp' or 'fsdp', got {strategy!r}")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and not hasattr(model, "config") else model


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def mean_across(value: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= d.world_size
    return value


def full_state_dicts(model, optimizer, d: Dist) -> tuple[dict, dict]:
    """Whole (unsharded) model and optimizer state dicts, on CPU, for saving."""
    if d.enabled:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=options), get_optimizer_state_dict(
            model, optimizer, options=options
        )
    return model.state_dict(), optimizer.state_dict()


def load_optimizer_state(model, optimizer, state: dict, d: Dist) -> None:
    if d.enabled:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)
