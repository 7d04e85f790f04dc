"""Shared machinery of the approximate variants' ``fast`` backends (not a variant: the leading
underscore keeps the package's auto-importer from registering it).

Every approximate variant with a fast path has a config knob ``backend``:

* ``reference`` -- the original path: the variant's own math in fp32 (autocast disabled), which
  the tests check against the method's definition in float64;
* ``fast`` -- the same function with a precision and memory policy for reduced precision: the
  large matmuls along the sequence take operands in the *compute dtype* (below) with fp32
  accumulation; only stabilisers, normalisers and log-sum-exps are kept in fp32; tensors saved
  for backward along the sequence are in the compute dtype; pointwise chains are compiled with
  ``torch.compile`` on CUDA (eager elsewhere);
* ``auto`` -- ``fast`` on CUDA or when the compute dtype is reduced (bf16/fp16), ``reference``
  for fp32 on the CPU (where the two agree to fp32 rounding and the reference path is the one
  the CPU peer comparison was measured with).

The compute dtype of an input ``x`` is autocast's dtype when autocast is on for ``x``'s device
type and ``x`` is a float32/16 tensor, else ``x.dtype`` (a bf16 module run without autocast
computes in bf16; float64 stays float64).
"""
from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Callable

import torch

from ._precision import working_dtype

BACKENDS = ("auto", "reference", "fast")
REDUCED = (torch.bfloat16, torch.float16)
#: ``function name -> error`` for every :class:`CudaCompiled` function that fell back to eager
COMPILE_FAILURES: dict[str, str] = {}
#: why :func:`matmul_fp32` upcast on CUDA instead of an fp32-output tensor-core matmul (empty: it did not)
MATMUL_FP32_FALLBACK: dict[str, str] = {}


def check_backend(variant: str, backend: str) -> None:
    """Raise a clear error for an unknown ``backend`` knob value."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown {variant} backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the fast path computes in for input ``x`` (see the module docstring)."""
    if x.dtype in (torch.float32, *REDUCED) and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def functorch_active() -> bool:
    """Whether a ``torch.func`` transform (jvp, vjp, vmap, grad) is tracing the current call.

    The fast paths' custom autograd functions and torch's fused CPU attention kernel have no
    forward-mode or vmap rules, so ``auto`` resolves to the reference path there (the smoothness
    measures run under ``jvp`` / ``vjp``): the same function, with plain autograd."""
    try:
        return torch._C._functorch.peek_interpreter_stack() is not None
    except AttributeError:  # a torch without functorch
        return False


_REFERENCE_ONLY = threading.local()


@contextlib.contextmanager
def reference_paths():
    """Within this context ``backend=auto`` runs every variant's reference path: plain autograd,
    differentiable twice (the smoothness search's double backward), with forward-mode rules. The
    fast paths' hand-written backwards and torch's fused CPU kernel are differentiable once."""
    before = getattr(_REFERENCE_ONLY, "on", False)
    _REFERENCE_ONLY.on = True
    try:
        yield
    finally:
        _REFERENCE_ONLY.on = before


def reference_required() -> bool:
    """Whether ``auto`` must run the reference path: under :func:`reference_paths` or a ``torch.func``
    transform (:func:`functorch_active`)."""
    return getattr(_REFERENCE_ONLY, "on", False) or functorch_active()


def auto_or_reference(fast: str) -> str:
    """What ``backend=auto`` runs when its fast choice is ``fast``: ``reference`` where
    :func:`reference_required`, ``fast`` otherwise."""
    return "reference" if reference_required() else fast


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """``reference`` or ``fast`` for the configured ``backend`` and an input ``x``."""
    if backend != "auto":
        return backend
    return "fast" if x.is_cuda or compute_dtype(x) in REDUCED else "reference"


def no_autocast(device: torch.device):
    """Autocast off on ``device``'s type: the fast paths choose every dtype explicitly."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know
        return contextlib.nullcontext()


def matmul_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (batched, ``(..., n, k) @ (..., k, m)``) with an fp32 result (float64 stays float64).

    On CUDA with bf16/fp16 operands: one tensor-core matmul with fp32 output
    (``torch.bmm(..., out_dtype=torch.float32)``, no rounding of the result to the operands'
    dtype); elsewhere, or where that overload is unavailable, the operands are upcast.
    """
    if a.is_cuda and a.dtype in REDUCED and b.dtype == a.dtype:
        lead = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        a3 = a.expand(*lead, *a.shape[-2:]).reshape(-1, *a.shape[-2:])
        b3 = b.expand(*lead, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
        try:
            return torch.bmm(a3, b3, out_dtype=torch.float32).view(*lead, a.shape[-2], b.shape[-1])
        except (TypeError, RuntimeError, NotImplementedError) as err:  # same result, more time and memory
            MATMUL_FP32_FALLBACK.setdefault("bmm", f"{type(err).__name__}: {err}")
    acc = working_dtype(a.dtype, b.dtype)
    return torch.matmul(a.to(acc), b.to(acc))


class CudaCompiled:
    """A pure tensor function, run through ``torch.compile`` when its first argument is a CUDA
    tensor (so a pointwise chain -- exp, subtract, scale, mask -- fuses into one kernel) and
    eagerly otherwise: CPU code never compiles. If compiling fails (no Triton, an unsupported
    op) it warns once and stays eager. Meant for functions without autograd inside (the fast
    paths call them from ``torch.autograd.Function`` forwards and backwards); inside an outer
    ``torch.compile`` region it runs eagerly, so the outer compiler traces it."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self._compiled: Callable | None = None
        self._failed = False

    def __call__(self, *args, **kwargs):
        if not (args[0].is_cuda and not self._failed) or torch.compiler.is_compiling():
            return self.fn(*args, **kwargs)
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, dynamic=True)
        try:
            return self._compiled(*args, **kwargs)
        except torch.OutOfMemoryError:
            raise
        except Exception as err:  # noqa: BLE001 - stay correct: the eager function is the same
            self._failed = True
            COMPILE_FAILURES[self.fn.__name__] = f"{type(err).__name__}: {err}"
            warnings.warn(f"torch.compile of {self.fn.__name__} failed ({type(err).__name__}: {err}); "
                          "running it eagerly", RuntimeWarning, stacklevel=2)
            return self.fn(*args, **kwargs)
