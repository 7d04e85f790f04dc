"""Synthetic inputs in the ball of radius R: random, adversarial, and found by search.

Every token satisfies ``||x_i|| <= R`` (the set Castin et al. take the supremum over).

* :func:`sphere_rows` -- tokens drawn uniformly on the sphere of radius R (a typical point).
* :func:`adversarial_rows` -- the paper's construction (reference code ``adversarial_data``; a
  fallback for score matrices without a real eigenvalue is described at :func:`adversarial_direction`):
  with ``lambda_max``, ``lambda_min`` the extreme real eigenvalues of ``A = W_K W_Q^T / sqrt(d_h)``,
  if ``lambda_max > -8 lambda_min``: one token at ``R u`` and ``n - 1`` at ``R u / 2`` (``u`` the
  unit eigenvector of ``lambda_max``); otherwise ``R [-u, u, ..., u]`` (``u`` that of
  ``lambda_min``). Then every query (but at most one) puts almost all its attention on the first
  token, so moving that token moves ~n outputs: ``||J|| >= ~sqrt(n) ||W_V||_2`` while the score
  gap (``lambda_max R^2 / 4`` or ``2 |lambda_min| R^2``) exceeds ``log n`` -- the sqrt(n) law.
  For larger n the first token's weight falls and the mean-field regime begins.
* :func:`search_rows` -- projected gradient ascent of the power-iteration estimate over the ball.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .estimate import Map, PowerResult, power_iteration
from .maps import Projections


def sphere_rows(n: int, d: int, *, radius: float = 1.0, seed: int = 0, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """``(n, d)`` tokens drawn uniformly on the sphere of ``radius`` (float64 draw, then cast)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    x = radius * x / x.norm(dim=-1, keepdim=True)
    return x.to(device=device, dtype=dtype)


@dataclass
class Adversarial:
    """The construction's choice: ``direction`` (d,) unit vector, ``eigenvalue`` (``u^T A u``),
    ``case`` ``"max"`` (``R u`` then ``R u / 2``) or ``"min"`` (``-R u`` then ``R u``),
    ``score_gap`` = the logit margin of the first token for the other queries (``lambda R^2 / 4``
    or ``2 |lambda| R^2``), and ``source``: ``"eigenvector"`` (the paper) or ``"symmetric part"``
    (the fallback when ``A`` has no real eigenvalue)."""

    direction: torch.Tensor
    eigenvalue: float
    case: str
    score_gap: float
    source: str = "eigenvector"


def adversarial_direction(a: torch.Tensor, radius: float) -> Adversarial:
    """The paper's choice of eigenvector of the score matrix ``a (d, d)`` (see module docstring).

    The construction's scores depend on ``u`` only through ``u^T A u``. A real matrix of even size
    may have no real eigenvalue; then the extreme eigenvectors of the symmetric part
    ``(A + A^T) / 2`` are used (their ``u^T A u`` are the extremes over all unit ``u``).
    """
    a = a.detach().double().cpu()
    vals, vecs = torch.linalg.eig(a)
    real = vals.imag.abs() <= 1e-9 * max(1.0, float(vals.abs().max()))
    source = "eigenvector"
    if bool(real.any()):
        lam, vec = vals.real[real], vecs.real[:, real]
    else:
        lam, vec = torch.linalg.eigh((a + a.T) / 2)
        source = "symmetric part"
    i_max, i_min = int(lam.argmax()), int(lam.argmin())
    lam_max, lam_min = float(lam[i_max]), float(lam[i_min])
    if lam_max > -8 * lam_min:
        u, lam_u, case, gap = vec[:, i_max], lam_max, "max", lam_max * radius ** 2 / 4
    else:
        u, lam_u, case, gap = vec[:, i_min], lam_min, "min", 2 * abs(lam_min) * radius ** 2
    return Adversarial(u / u.norm(), lam_u, case, gap, source)


def adversarial_rows(proj: Projections, n: int, *, radius: float, head: int = 0,
                     dtype: torch.dtype | None = None) -> tuple[torch.Tensor, Adversarial]:
    """``(n, d)`` adversarial tokens for head ``head`` of ``proj`` and the construction's facts."""
    adv = adversarial_direction(proj.score_matrix(head), radius)
    u = adv.direction.to(device=proj.w.device)
    if adv.case == "max":
        x = torch.cat([u[None], u[None].expand(n - 1, -1) / 2])
    else:
        x = torch.cat([-u[None], u[None].expand(n - 1, -1)])
    return (radius * x).to(dtype or proj.w.dtype), adv


def project_to_ball(x: torch.Tensor, radius: float) -> torch.Tensor:
    """Each row scaled back onto the ball of ``radius`` if it lies outside."""
    norms = x.norm(dim=-1, keepdim=True)
    return x * torch.clamp(radius / norms.clamp_min(torch.finfo(x.dtype).tiny), max=1.0)


def sigma_gradient(fn: Map, x: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Gradient in ``x`` of ``<u, J_fn(x) v>`` (= of ``sigma_max`` when ``u, v`` are its singular
    pair), as ``d/dx <J^T u, v>``: one double backward."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        (jtu,) = torch.autograd.grad(fn(xg), xg, u, create_graph=True)
        (g,) = torch.autograd.grad((jtu * v).sum(), xg)
    return g


@dataclass
class SearchResult:
    """Best point found: ``sigma`` (a power-iteration lower bound of ``||J||`` at ``x``), the
    start it came from, and the per-start values (``start_sigma``: at the start point,
    ``best_sigma``: best reached from it)."""

    sigma: float
    x: torch.Tensor
    start: str
    start_sigma: dict[str, float] = field(default_factory=dict)
    best_sigma: dict[str, float] = field(default_factory=dict)


def search_rows(fn: Map, starts: dict[str, torch.Tensor], *, radius: float, steps: int = 20,
                step_size: float = 0.1, iters: int = 20, iters_per_step: int = 3, seed: int = 0,
                start_results: dict[str, PowerResult] | None = None) -> SearchResult:
    """Projected gradient ascent of ``||J_fn(x)||_2`` over tokens ``||x_i|| <= radius``.

    From each start: the power iteration (``iters`` steps, seed ``seed``; or ``start_results[name]``
    if given, e.g. the adversarial pattern's own measurement, not run again) gives the start's value
    and right vector; then
    ``steps`` times: ``iters_per_step`` power iterations warm-started from the previous right
    vector give ``sigma`` and its singular pair ``u, v``; ``x`` moves along the normalized gradient
    of ``<u, J v>`` by ``step_size * radius * sqrt(n)`` in Frobenius norm (each token ~``step_size *
    radius``), shrinking linearly to 0 over the steps, and is projected back onto the ball.
    Every ``sigma`` seen is a lower bound of the Lipschitz constant at a point of the ball; the
    best one is returned, so the result is at least every start's value.
    Cost per start: ``iters + steps * (iters_per_step + 2)`` Jacobian products (no ``iters`` for a
    start in ``start_results``).
    """
    best: SearchResult | None = None
    start_sigma, best_sigma = {}, {}
    for name, x0 in starts.items():
        x = project_to_ball(x0.detach(), radius)
        res = (start_results or {}).get(name) or power_iteration(fn, x, iters, seed=seed)
        s0 = start_sigma[name] = res.sigma
        top, top_x = s0, x
        v = res.v
        scale = radius * math.sqrt(x.shape[0])
        for t in range(steps):
            res = power_iteration(fn, x, iters_per_step, v0=v)
            if not math.isfinite(res.sigma):
                break
            if res.sigma > top:
                top, top_x = res.sigma, x
            v = res.v
            g = sigma_gradient(fn, x, res.u, res.v)
            gnorm = float(g.norm())
            if not math.isfinite(gnorm) or gnorm == 0.0:
                break
            lr = step_size * scale * (1 - t / steps)
            x = project_to_ball(x + lr * g / gnorm, radius)
        res = power_iteration(fn, x, iters_per_step, v0=v)   # the last step's point
        if math.isfinite(res.sigma) and res.sigma > top:
            top, top_x = res.sigma, x
        best_sigma[name] = top
        if best is None or top > best.sigma:
            best = SearchResult(top, top_x, name)
    if best is None:
        raise ValueError("search_rows needs at least one start")
    best.start_sigma, best.best_sigma = start_sigma, best_sigma
    return best
