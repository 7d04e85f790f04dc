"""Working precision of the reference paths: at least fp32, never below the input's dtype.

The reference path of every variant computes in the *working dtype* of its inputs: bf16/fp16
are lifted to fp32 (the usual mixed-precision rule for scores, softmax and normalisers), fp32
stays fp32 and float64 stays float64, so a float64 call is the method's own definition to
float64 rounding (the tests compare it with one). ``x.float()`` is *not* that rule: on float64
it is a downcast. Use :func:`upcast` / :func:`working_dtype` instead.
"""
from __future__ import annotations

import torch


def working_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The promotion of ``dtypes`` and fp32: ``bf16 -> fp32``, ``fp32 -> fp32``, ``float64 -> float64``."""
    out = torch.float32
    for dtype in dtypes:
        out = torch.promote_types(out, dtype)
    return out


def upcast(x: torch.Tensor, *others: torch.dtype) -> torch.Tensor:
    """``x`` in :func:`working_dtype` of its own dtype (and ``others``): at least fp32, never lower."""
    return x.to(working_dtype(x.dtype, *others))


def lowest(dtype: torch.dtype) -> float:
    """The most negative finite value of ``dtype``: the fill of a disallowed score before a softmax."""
    return torch.finfo(dtype).min
