"""What the case processes' server loads before it forks any (:mod:`lra.bench.isolation`).

The multiprocessing forkserver imports this module once; ``lra-bench`` itself never does
(:func:`lra.bench.registry.discover` skips ``_`` modules). It imports the bench and warms, on tiny
tensors, the work cases do for the first time lazily: ``FlopCounterMode`` (which imports sympy and
``torch._dynamo``), ``torch.autograd.grad`` and autocast (``torch.fx``), fp32 and bf16 GEMMs. So no
case process spends seconds importing them, nor counts their memory (50-100 MiB measured) as its
own. With one thread: a fork of a process whose OpenMP thread pool has run hangs in its first
parallel region; each case process then sets the run's threads (it has no pool to inherit).
"""
from __future__ import annotations

import torch

torch.set_num_threads(1)

import lra.bench  # noqa: E402,F401 - the modes, variants and model every case uses
from lra.timing import count_flops  # noqa: E402


def _warm() -> None:
    """Each kind of work a case does, once, on tiny tensors."""
    x = torch.randn(4, 8, requires_grad=True)
    count_flops(lambda: (x @ x.T).sum().backward())
    torch.autograd.grad((x @ x.T).sum(), (x,))
    for dtype in (torch.float32, torch.bfloat16):
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            torch.mm(x.to(dtype), x.T.to(dtype))


_warm()
