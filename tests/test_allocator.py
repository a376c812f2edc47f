"""keep_freed_memory: large tensors come from malloc's heap instead of fresh mmap regions."""

import ctypes
import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from yoco import allocator
from yoco.allocator import GLIBC, M_MMAP_MAX, keep_freed_memory, release_freed_memory

ROOT = Path(__file__).resolve().parents[1]
# What these tests observe (mmapped block counts from mallinfo2, memory kept after free) exists
# only in glibc's malloc. Elsewhere keep_freed_memory applies nothing and says so, which
# test_off_glibc_nothing_is_applied checks on every platform.
ONLY_GLIBC = pytest.mark.skipif(
    not GLIBC,
    reason="observes glibc malloc's own counters (mallinfo2); off glibc the setting is not applied, "
    "as test_off_glibc_nothing_is_applied checks",
)
DEFAULT_MMAP_MAX = 65536  # glibc's default


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def mmapped_blocks(libc) -> int:
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2().hblks


# Run in a fresh interpreter: in this one, earlier tests (the yoco command applies the setting)
# leave free heap memory that could serve the control's block without a new mapping.
FRESH_PROCESS = """
import ctypes, ctypes.util, torch
from yoco.allocator import keep_freed_memory
from tests.test_allocator import mmapped_blocks
libc = ctypes.CDLL(ctypes.util.find_library("c"))
before = mmapped_blocks(libc)
x = torch.empty(64 << 20, dtype=torch.uint8)
print(mmapped_blocks(libc) - before)
del x
print(keep_freed_memory())
before = mmapped_blocks(libc)
x = torch.empty(64 << 20, dtype=torch.uint8)
print(mmapped_blocks(libc) - before)
"""


@ONLY_GLIBC
def test_a_large_tensor_is_mapped_by_default_and_comes_from_the_heap_once_applied():
    environment = {k: v for k, v in os.environ.items() if k != "YOCO_SYSTEM_MALLOC"}
    run = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS],
        capture_output=True,
        text=True,
        check=True,
        env=environment,
        cwd=ROOT,
    )
    mapped_by_default, applied, mapped_once_applied = run.stdout.split()
    assert mapped_by_default == "1"  # the control: glibc maps a 64 MiB block of its own
    assert applied == "True"
    assert mapped_once_applied == "0"


def test_opting_out_leaves_malloc_alone(monkeypatch):
    monkeypatch.setenv("YOCO_SYSTEM_MALLOC", "1")
    assert keep_freed_memory() is False


def test_off_glibc_nothing_is_applied(monkeypatch):
    monkeypatch.delenv("YOCO_SYSTEM_MALLOC", raising=False)
    monkeypatch.setattr(allocator, "GLIBC", False)
    assert allocator._glibc() is None  # no libc to call mallopt or malloc_trim on
    assert keep_freed_memory() is False
    release_freed_memory()  # a no-op, not an error


@ONLY_GLIBC
def test_kept_memory_stays_resident_until_released(monkeypatch):
    monkeypatch.delenv("YOCO_SYSTEM_MALLOC", raising=False)
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    process = psutil.Process()
    try:
        assert keep_freed_memory()
        x = torch.ones(256 << 20, dtype=torch.uint8)  # written, so resident
        resident = process.memory_info().rss
        del x
        assert process.memory_info().rss > resident - (128 << 20)  # kept
        release_freed_memory()
        assert process.memory_info().rss < resident - (192 << 20)  # handed back
    finally:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
