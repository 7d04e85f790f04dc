"""Empirical Lipschitz constants of attention maps.

:func:`lipschitz_estimate` returns the spectral norm ``||J_f(x)||_2`` of the Jacobian of a
function at a point -- the local Lipschitz constant there -- by power iteration on
``J^T J`` with autograd (``v -> J^T (J v)``: one forward-mode product, ``torch.func.jvp``,
and one reverse-mode product, ``torch.func.vjp``; nothing of size ``(numel)^2`` is built).

:func:`attention_map` builds the map studied by Castin, Ablin & Peyre (2023, "How Smooth Is
Attention?"): ``X (N, d) -> Attention(X Wq, X Wk, X Wv)`` with one head and fixed random
projections. For softmax attention on inputs of bounded radius its Lipschitz constant can grow
like ``sqrt(N)`` in the worst case; :func:`growth_exponent` fits ``L ~ c N^alpha`` to measurements.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch


def _jvp_fallback(fn, x, v):
    """``J v`` by the double-vjp trick (for ops without forward-mode AD)."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        y = fn(xg)
        u = torch.zeros_like(y, requires_grad=True)
        (g,) = torch.autograd.grad(y, xg, u, create_graph=True)   # J^T u, linear in u
        (jv,) = torch.autograd.grad(g, u, v)                       # d/du <J^T u, v> = J v
    return jv


def lipschitz_estimate(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                       iters: int = 20, seed: int = 0) -> float:
    """Largest singular value of the Jacobian of ``fn`` at ``x``, by ``iters`` power iterations.

    ``fn`` maps a tensor shaped like ``x`` to a tensor (any shape). The start vector is drawn
    from ``torch.Generator().manual_seed(seed)``; each step applies ``J^T J`` and renormalizes;
    the estimate is ``sqrt(v . J^T J v)`` for the final unit vector ``v`` (a lower bound that
    converges to ``sigma_max`` at rate ``(sigma_2 / sigma_1)^(2 iters)``).
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    x = x.detach()
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
    v = v / v.norm()
    _, vjp_fn = torch.func.vjp(fn, x)

    use_forward_mode = True

    def jvp(vec):
        nonlocal use_forward_mode
        if use_forward_mode:
            try:
                return torch.func.jvp(fn, (x,), (vec,))[1]
            except (RuntimeError, NotImplementedError):
                use_forward_mode = False
        return _jvp_fallback(fn, x, vec)

    estimate = 0.0
    for _ in range(iters):
        w = vjp_fn(jvp(v).detach())[0].detach()     # J^T J v
        rayleigh = float((v * w).sum())             # v . J^T J v  (= ||J v||^2)
        estimate = math.sqrt(max(rayleigh, 0.0))
        norm = w.norm()
        if not torch.isfinite(norm) or float(norm) == 0.0:
            break
        v = w / norm
    return estimate


def unit_rows(n: int, d: int, *, seed: int = 0, radius: float = 1.0,
              dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(n, d)`` points drawn uniformly on the sphere of ``radius`` (unit-scale rows)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    x = radius * x / x.norm(dim=-1, keepdim=True)
    return x.to(device=device, dtype=dtype)


def attention_map(attention: Callable, d: int, *, seed: int = 0, weight_std: float = 1.0,
                  dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
    """``X (N, d) -> attention(X Wq, X Wk, X Wv)`` (one head) with fixed ``N(0, weight_std^2)``
    projections ``Wq, Wk, Wv (d, d)`` drawn from ``seed``; returns ``(N, d)``."""
    gen = torch.Generator().manual_seed(seed + 1)
    w = (torch.randn(3, d, d, generator=gen, dtype=torch.float64) * weight_std).to(device=device, dtype=dtype)

    def fn(x: torch.Tensor) -> torch.Tensor:
        q, k, v = (x @ w[i] for i in range(3))
        return attention(q[None, None], k[None, None], v[None, None])[0, 0]

    return fn


def growth_exponent(lengths: Sequence[float], values: Sequence[float]) -> float | None:
    """Least-squares slope ``alpha`` of ``log L`` against ``log N`` (``L ~ c N^alpha``);
    None with fewer than two positive, finite points."""
    pts = [(math.log(n), math.log(val)) for n, val in zip(lengths, values)
           if n and val is not None and val > 0 and math.isfinite(val)]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx
