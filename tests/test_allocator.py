"""keep_freed_memory: large tensors come from malloc's heap instead of fresh mmap regions."""

import ctypes
import ctypes.util
import platform

import psutil
import pytest
import torch

from yoco.allocator import M_MMAP_MAX, keep_freed_memory, release_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
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


@pytest.mark.skipif(not GLIBC, reason="glibc malloc only")
def test_a_large_tensor_is_mapped_by_default_and_comes_from_the_heap_once_applied(monkeypatch):
    monkeypatch.delenv("YOCO_SYSTEM_MALLOC", raising=False)
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    try:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        before = mmapped_blocks(libc)
        x = torch.empty(64 << 20, dtype=torch.uint8)
        assert mmapped_blocks(libc) == before + 1  # the control: glibc maps a 64 MiB block
        del x
        assert keep_freed_memory()
        before = mmapped_blocks(libc)
        x = torch.empty(64 << 20, dtype=torch.uint8)
        assert mmapped_blocks(libc) == before
        del x
    finally:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)


def test_opting_out_leaves_malloc_alone(monkeypatch):
    monkeypatch.setenv("YOCO_SYSTEM_MALLOC", "1")
    assert keep_freed_memory() is False


@pytest.mark.skipif(not GLIBC, reason="glibc malloc only")
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
