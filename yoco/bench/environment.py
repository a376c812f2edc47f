"""What a measurement ran on. The machines we run on change from day to day (the same
Hugging Face Llama prefill took 3x longer on a CPU without AMX), so every section a benchmark
writes into docs/ states the CPU, its bf16 instructions and the versions, next to the command."""

import datetime
import os
import platform

import torch
import transformers

# The instructions that decide bf16 matmul speed on x86 CPUs, fastest first.
BF16_FLAGS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")


def _cpu() -> tuple[str, list[str]]:
    name, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return name, flags
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name in ("", platform.machine(), platform.processor()):
            name = value.strip()
        if key.strip() == "flags" and not flags:
            present = set(value.split())
            flags = [flag for flag in BF16_FLAGS if flag in present]
    return name, flags


def environment() -> dict:
    cpu, flags = _cpu()
    return dict(
        date=datetime.date.today().isoformat(),
        cpu=cpu,
        cpu_flags=flags,
        cores=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        python=platform.python_version(),
        torch=torch.__version__,
        transformers=transformers.__version__,
    )


def describe(env: dict) -> str:
    """One Markdown line; sections written by update_section must contain it."""
    flags = ", ".join(env["cpu_flags"]) or "none of " + ", ".join(BF16_FLAGS)
    return (
        f"Environment: {env['date']}; {env['cpu']} ({flags}), {env['cores']} cores, "
        f"{env['torch_threads']} torch threads; Python {env['python']}, torch {env['torch']}, "
        f"transformers {env['transformers']}.  "
    )
