"""Element-wise work fused into one kernel by ``torch.compile``, the eager function as fallback.

A chain of element-wise PyTorch operations reads and writes its whole tensor once per
operation. Where such a chain sits between two memory-bound products on a hot path (a decode
step's softmax over a long cache), those passes cost as much as the products. Inductor, the
compiler behind ``torch.compile``, turns the chain into one C++ loop that reads each input once.

:class:`Fused` wraps a function written as plain PyTorch, which stays its own reference (the
tests compare the two). It compiles for fixed shapes (``dynamic=False``): callers hand it only
shapes that repeat, such as whole blocks of a fixed size, so it compiles once per shape per
process (seconds; Inductor's on-disk cache makes later processes faster) and never per step.
Inductor needs a working C++ compiler; without one, or with ``YOCO_COMPILE=0`` in the
environment, the eager function runs instead, with one warning.
"""

import functools
import os
import time
import warnings

import torch

ENABLED = os.environ.get("YOCO_COMPILE", "1") != "0"


class Fused:
    """``fn`` compiled on first use, or ``fn`` itself where compiling is off or fails."""

    def __init__(self, fn):
        functools.update_wrapper(self, fn)
        self.eager = fn
        self._compiled = torch.compile(fn, dynamic=False, fullgraph=True) if ENABLED else None
        # Seconds of the first compiled call (compiling included): what a process pays once.
        self.compile_seconds: float | None = None

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def __call__(self, *args):
        if self._compiled is None:
            return self.eager(*args)
        try:
            if self.compile_seconds is not None:
                return self._compiled(*args)
            start = time.perf_counter()
            result = self._compiled(*args)
            self.compile_seconds = time.perf_counter() - start
            return result
        except (torch._inductor.exc.InductorError, torch._dynamo.exc.BackendCompilerFailed) as error:
            # Raised while compiling, before the function ran: nothing was written yet.
            warnings.warn(
                f"torch.compile failed, running {self.eager.__name__} eagerly: {error}", stacklevel=2
            )
            self._compiled = None
            return self.eager(*args)
