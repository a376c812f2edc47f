"""Let freed tensors' memory serve the next ones instead of going back to the kernel (glibc).

PyTorch on CPU allocates with ``malloc``. glibc hands out large blocks (above a threshold that
moves between 128 KiB and 32 MiB) as fresh ``mmap`` regions and unmaps them on ``free``, and it
trims free memory off the top of its heap. So each prefill chunk's or decode step's large
activations land on new pages, and the kernel faults in and zeroes every one of them again:
about 15% of a 16K-token bfloat16 prefill of the default benchmark shape on our 2-core CPU
(3.5 s instead of 4.1 s with this setting). jemalloc and tcmalloc, which PyTorch's CPU tuning
guide suggests loading with ``LD_PRELOAD``, avoid this by keeping freed memory; llama.cpp plans
one buffer up front. Here two ``mallopt`` calls do the same for the process: no ``mmap`` for
allocations, and up to ``keep_bytes`` of free heap kept rather than trimmed.

The cost is memory the process keeps after it has used it (at most its peak, plus the trim
threshold at the top of the heap): the right trade for a process doing inference or training.
The ``yoco`` command applies it for every subcommand; set ``YOCO_SYSTEM_MALLOC=1`` to leave
malloc alone. Library users can call :func:`keep_freed_memory` themselves.
:func:`release_freed_memory` hands the kept memory back (the benchmarks call it before measuring
a peak resident size).
"""

import ctypes
import ctypes.util
import os
import platform

# mallopt parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
KEEP_BYTES = 1 << 30
# mallopt and malloc_trim are glibc's own: on macOS, Windows or musl nothing here applies.
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _glibc():
    return ctypes.CDLL(ctypes.util.find_library("c")) if GLIBC else None


def keep_freed_memory(keep_bytes: int = KEEP_BYTES) -> bool:
    """Make glibc malloc serve every allocation from its heap and keep up to ``keep_bytes`` free.

    Returns True when applied; False where it does not apply (not glibc, e.g. macOS, musl or
    Windows) or when ``YOCO_SYSTEM_MALLOC`` is set to anything but "" or "0".
    """
    if os.environ.get("YOCO_SYSTEM_MALLOC", "") not in ("", "0"):
        return False
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, keep_bytes))


def release_freed_memory() -> None:
    """Return the free memory malloc holds to the kernel (glibc ``malloc_trim``); elsewhere a no-op."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
