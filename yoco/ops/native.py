"""C kernels compiled at first use with the machine's C compiler and called through ctypes.

A few hot loops need instructions PyTorch's kernels do not combine for our shapes (a decode
step's int8 attention: integer dot products, softmax and weighted sum in one pass over the
cache). Their C source lives beside the Python that calls them; :class:`NativeKernel` compiles
it once per process (well under a second) with ``-O3 -march=native -fopenmp``, so the code
matches the CPU it runs on, and loads it with :mod:`ctypes`. OpenMP resolves to the runtime
PyTorch already loaded (same ``libgomp.so.1``), so the kernel's threads are PyTorch's threads.

Nothing is cached on disk: a library built for one CPU could crash on another that shares the
home folder. Without a compiler, without the instructions a kernel needs (its source stops
with ``#error``), or with ``YOCO_NATIVE=0`` in the environment, :meth:`NativeKernel.function`
returns None with one warning and callers run their PyTorch path, which stays the reference.
"""

import ctypes
import os
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path

ENABLED = os.environ.get("YOCO_NATIVE", "1") != "0"
COMPILE_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC"]
# Linked without -ffast-math: with it, GCC before 13 links crtfastmath.o into the library, whose
# constructor turns on flush-to-zero for the whole process when the library loads, silently
# changing every later PyTorch result that passes through a subnormal.
LINK_FLAGS = ["-shared", "-fopenmp"]
COMPILE_TIMEOUT_S = 120  # a second or two normally; a stuck compiler must not stall decoding


class NativeKernel:
    """The C function ``symbol`` of ``source``, compiled on the first call of :meth:`function`."""

    def __init__(self, name: str, source: str, symbol: str, argtypes: list):
        self.name, self.source, self.symbol, self.argtypes = name, source, symbol, argtypes
        self._function = None
        self._tried = False
        self._lock = threading.Lock()  # a server's threads may all reach the first call at once
        self.compile_seconds: float | None = None  # what this process paid, once
        self.failure: str | None = None  # why it is unavailable, if it is

    def function(self):
        """The ctypes function, or None (with one warning) where it cannot be built here."""
        if self._tried:
            return self._function
        with self._lock:
            if not self._tried:
                try:
                    self._function = self._build()
                except _Unavailable as reason:
                    self.failure = str(reason)
                    warnings.warn(
                        f"{self.name}: native kernel unavailable ({reason}); using the PyTorch path",
                        stacklevel=3,
                    )
                self._tried = True  # after the build: the unlocked check above must not see it early
        return self._function

    def _build(self):
        if not ENABLED:
            raise _Unavailable("YOCO_NATIVE=0")
        compiler = os.environ.get("CC", "cc")
        if shutil.which(compiler) is None:
            raise _Unavailable(f"no C compiler {compiler!r} on PATH")
        start = time.perf_counter()
        try:
            loaded = self._compile_and_load(compiler)
        except OSError as error:  # no writable temporary folder, a full disk
            raise _Unavailable(f"could not write the build files: {error}") from None
        self.compile_seconds = time.perf_counter() - start
        try:
            function = getattr(loaded, self.symbol)
        except AttributeError:
            raise _Unavailable(f"the library has no function {self.symbol}") from None
        function.argtypes, function.restype = self.argtypes, None
        return function

    def _compile_and_load(self, compiler: str) -> ctypes.CDLL:
        with tempfile.TemporaryDirectory(prefix="yoco-native-") as folder:
            source, library = Path(folder) / f"{self.symbol}.c", Path(folder) / f"{self.symbol}.so"
            source.write_text(self.source)
            objects = source.with_suffix(".o")
            _run([compiler, *COMPILE_FLAGS, "-c", str(source), "-o", str(objects)])
            _run([compiler, *LINK_FLAGS, str(objects), "-o", str(library), "-lm"])
            try:
                loaded = ctypes.CDLL(str(library))  # mapped now: the file may go with the folder
            except OSError as error:
                raise _Unavailable(f"could not load the compiled library: {error}") from None
        return loaded


class _Unavailable(Exception):
    pass


def _run(command: list[str]) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    except OSError as error:  # found on PATH but not runnable
        raise _Unavailable(f"{command[0]} could not run: {error}") from None
    except subprocess.TimeoutExpired:
        raise _Unavailable(f"{command[0]} took over {COMPILE_TIMEOUT_S} s") from None
    if done.returncode != 0:
        first = next((line for line in done.stderr.splitlines() if "error" in line), done.stderr.strip())
        raise _Unavailable(f"{command[0]} failed: {first[:300]}")
