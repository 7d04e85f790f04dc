"""The local Lipschitz constant of a map at a point: ``||J_f(x)||_2``, the Jacobian's spectral norm.

:func:`power_iteration` estimates it with autograd, never building the Jacobian: each step applies
``J^T J`` to a unit vector (one forward-mode product ``J v``, ``torch.func.jvp``, and one
reverse-mode product ``J^T u``, ``torch.func.vjp``) and renormalizes. Every estimate it returns is
``||J v||`` for a unit ``v``, so a lower bound of the true value, converging to it at the rate
``(sigma_2 / sigma_1)^(2 k)`` after ``k`` steps. Cost per step: about three evaluations of ``f``.

:func:`exact_lipschitz` builds the full Jacobian (``torch.autograd.functional.jacobian``,
``numel(f(x)) x numel(x)``) and takes its largest singular value: the reference at small sizes.

:func:`growth_exponent` fits ``L ~ c n^alpha`` by least squares in log-log.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

Map = Callable[[torch.Tensor], torch.Tensor]


def _jvp_double_vjp(fn: Map, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``J v`` by the double-vjp trick, for ops without forward-mode derivatives."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        y = fn(xg)
        u = torch.zeros_like(y, requires_grad=True)
        (g,) = torch.autograd.grad(y, xg, u, create_graph=True)   # J^T u, linear in u
        (jv,) = torch.autograd.grad(g, u, v)                       # d/du <J^T u, v> = J v
    return jv


class JacobianProducts:
    """``J v`` and ``J^T u`` of ``fn`` at ``x`` (one forward pass is kept for the ``J^T u``s).

    Forward mode (``torch.func.jvp``) is tried first; an op without a forward-mode derivative
    switches this instance to the double-vjp trick (same product, one more backward pass).
    """

    def __init__(self, fn: Map, x: torch.Tensor):
        self.fn, self.x = fn, x.detach()
        self.y, self._vjp = torch.func.vjp(fn, self.x)
        self.forward_mode = True

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        if self.forward_mode:
            try:
                return torch.func.jvp(self.fn, (self.x,), (v,))[1].detach()
            except (RuntimeError, NotImplementedError):
                self.forward_mode = False
        return _jvp_double_vjp(self.fn, self.x, v).detach()

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        return self._vjp(u)[0].detach()


@dataclass
class PowerResult:
    """What :func:`power_iteration` found.

    ``sigma = ||J v||`` (a lower bound of ``||J||_2``); ``v`` the unit right vector (shaped like
    ``x``) and ``u = J v / ||J v||`` the left one (shaped like ``f(x)``); ``rel_change``: relative
    change of ``sigma`` over the last step (a convergence diagnostic); ``steps`` taken.
    """

    sigma: float
    v: torch.Tensor
    u: torch.Tensor
    rel_change: float
    steps: int


def _unit(t: torch.Tensor) -> torch.Tensor:
    return t / t.norm()


def start_vector(x: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded unit vector shaped like ``x`` (drawn in float64 on the CPU, then cast: the same
    start on every device and dtype)."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    return _unit(v).to(device=x.device, dtype=x.dtype)


def power_iteration(fn: Map, x: torch.Tensor, iters: int = 20, *, seed: int = 0,
                    v0: torch.Tensor | None = None) -> PowerResult:
    """``iters`` power iterations on ``J^T J`` of ``fn`` at ``x``, from ``v0`` (else a seeded draw).

    Each step: ``w = J v``, ``sigma = ||w||``, ``u = w / sigma``, ``v <- J^T u / ||J^T u||``.
    The returned ``sigma`` is the largest ``||J v||`` seen (every one is a lower bound) and ``v``,
    ``u`` the pair that gave it. Cost: ``iters`` (jvp + vjp) pairs.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    prod = JacobianProducts(fn, x)
    v = _unit(v0.detach().to(x)) if v0 is not None else start_vector(x, seed)
    best = PowerResult(0.0, v, torch.zeros_like(prod.y), math.inf, 0)
    previous = None
    for step in range(1, iters + 1):
        w = prod.jvp(v)
        sigma = float(w.norm())
        if not math.isfinite(sigma):
            return PowerResult(sigma, v, w, math.nan, step)
        if sigma == 0.0:
            break
        u = w / sigma
        rel = abs(sigma - previous) / sigma if previous is not None else math.inf
        if sigma >= best.sigma:
            best = PowerResult(sigma, v, u, rel, step)
        best.rel_change, best.steps = rel, step
        previous = sigma
        g = prod.vjp(u)                               # J^T u = J^T J v / sigma
        norm = g.norm()
        if not torch.isfinite(norm) or float(norm) == 0.0:
            break
        v = g / norm
    return best


def lipschitz_estimate(fn: Map, x: torch.Tensor, iters: int = 20, seed: int = 0) -> float:
    """``||J_fn(x)||_2`` by :func:`power_iteration` (a lower bound that converges to it)."""
    return power_iteration(fn, x, iters, seed=seed).sigma


def exact_lipschitz(fn: Map, x: torch.Tensor) -> float:
    """``||J_fn(x)||_2`` from the full Jacobian (``numel(fn(x)) x numel(x)``): small sizes only."""
    jac = torch.autograd.functional.jacobian(fn, x.detach())
    out_numel = jac.numel() // x.numel()
    return float(torch.linalg.matrix_norm(jac.reshape(out_numel, x.numel()), ord=2))


def growth_exponent(lengths: Sequence[float], values: Sequence[float]) -> float | None:
    """Least-squares slope ``alpha`` of ``log L`` against ``log n`` (``L ~ c n^alpha``);
    None with fewer than two distinct lengths holding positive, finite values."""
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
