"""The systems `yoco bench` compares, behind one small interface.

YOCO-SWA, YOCO-gRet and our Transformer run through the yoco engine; Hugging Face's
``LlamaForCausalLM`` (SDPA attention, its own ``DynamicCache``) runs through its own forward,
with the same weights as our Transformer. Every system computes next-token logits for the
last prompt position only (``logits_to_keep=1``), as ``generate`` does. Besides these four
defaults, any registry name the cost model covers (:func:`yoco.bench.flops.self_decoder`) can
be benchmarked, e.g. the paper's ``yoco-gret+noconv``.
"""

import argparse
import copy
from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import yoco
from yoco.bench.flops import Shape, self_decoder
from yoco.models import build

SYSTEMS = ("yoco-swa", "yoco-gret", "transformer", "hf-llama")


def system_name(name: str) -> str:
    """``name`` if `yoco bench` can measure it and predict its costs (an argparse type)."""
    try:
        self_decoder(name)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return name


def build_model(system: str, shape: Shape, dtype: torch.dtype, max_positions: int) -> torch.nn.Module:
    fields = dict(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=max_positions,
    )
    torch.manual_seed(0)
    self_decoder(system)  # ValueError for a model the cost model does not describe
    if system == "hf-llama":
        ours = build_model("transformer", shape, torch.float32, max_positions)
        config = LlamaConfig(**fields, attn_implementation="sdpa")
        model = LlamaForCausalLM(config)
        model.load_state_dict(ours.state_dict())
    else:
        options = dict(sliding_window=shape.sliding_window, gret_chunk_size=shape.gret_chunk_size)
        model = build(system, where_applicable=options, **fields)
    return model.to(dtype).eval()


@dataclass
class Runner:
    """Prefill, decode and cache handling for one system."""

    system: str
    model: torch.nn.Module

    @property
    def is_hf(self) -> bool:
        return self.system == "hf-llama"

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, reserve: int = 0):
        """ids (1, N) -> (next-token logits (1, V), cache)."""
        if self.is_hf:
            out = self.model(ids, use_cache=True, logits_to_keep=1)
            return out.logits[:, -1], out.cache
        return yoco.prefill(self.model, ids, capacity=ids.shape[1] + reserve)

    @torch.no_grad()
    def decode(self, logits: torch.Tensor, cache, steps: int) -> None:
        """Greedy decoding for ``steps`` tokens, every row of the cache at once."""
        for _ in range(steps):
            token = logits.argmax(dim=-1, keepdim=True)
            logits = self.model(token, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]

    def replicate(self, cache, batch: int):
        """A fresh copy of ``cache`` with its one row repeated ``batch`` times."""
        if self.is_hf:
            clone = copy.deepcopy(cache)
            if batch > 1:
                for layer in clone.layers:
                    layer.batch_repeat_interleave(batch)
            return clone
        return type(cache).stack([cache] * batch)

    def cache_nbytes(self, cache) -> int:
        if self.is_hf:
            return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
        return cache.nbytes()
