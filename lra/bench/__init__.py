"""``lra-bench``: speed, memory, approximation error and smoothness of attention variants.

A Hydra app (``conf/bench.yaml``, entry point :mod:`lra.cli.bench`). It runs a grid of cases --
variant x length x the mode's other axes (batch, dtype, input pattern, ...) x mode -- and writes
one result record per case (:func:`lra.results.make_record`, ``kind="bench"``) into
``<job dir>/records/`` and, with ``results_dir=...``, a copy there. No data is needed (but for
the ``smoothness`` mode's ``data`` patterns); every input is random and seeded.

The modes (``case.mode`` in the records), one module each:

=================  ==========================================================================
``op_fwd``         :mod:`lra.bench.op`: the variant alone on random (B, H, N, D) q, k, v, forward
``op_fwd_bwd``     :mod:`lra.bench.op`: the same, forward + backward
``model_step``     :mod:`lra.bench.model_step`: one training step of the encoder at a task shape
``exactness``      :mod:`lra.bench.exactness`: error against float64 softmax attention
``smoothness``     :mod:`lra.bench.smoothness`: the local Lipschitz constant as N grows
``train_overhead`` :mod:`lra.bench.train_overhead`: ``lra-train``'s step over forward+backward (opt-in)
``decode``         :mod:`lra.bench.decode`: time per generated token at context N (opt-in)
``calibration``    :mod:`lra.bench.calibration`: the machine's GEMM rate, once per CPU run
=================  ==========================================================================

How a run flows: :func:`lra.bench.settings.resolve_settings` (the config with the device's
defaults, checked before the first case) -> :func:`lra.bench.grid.plan` (the cases, N ascending
innermost) -> :func:`lra.bench.runner.run_grid` (each case measured by its mode, one record each,
OOM, caps and failures recorded; each CPU case in a fresh process of its own:
:mod:`lra.bench.isolation`, :mod:`lra.bench.caps`) -> :func:`lra.bench.summary.summary` (a text
table per mode). The
modes are data (:class:`lra.bench.registry.Mode`) in :data:`lra.bench.registry.MODES`; shared
pieces: :mod:`lra.bench.case` (``Case``, ``Measurement``), :mod:`lra.bench.measuring` (timing
metrics, autocast), :mod:`lra.bench.encoder` (the encoder modes' model). How time, memory and
FLOPs are measured, and how seeds and the host are recorded: ``docs/numerics.md``.

Add a mode -- one new module, ``lra/bench/<name>.py``, and nothing else in the code:

1. its docstring says what a case is and what it measures;
2. ``measure(case, settings, device) -> Measurement`` measures one case
   (helpers: :mod:`lra.bench.measuring`, :mod:`lra.timing`);
3. ``axes(variant, settings) -> list[dict]`` gives the case axes besides N (``batch_size``,
   ``dtype``, ``pattern``, ...); the grid adds the lengths;
4. ``register(Mode(name, order=..., axes=axes, measure=measure, metric=..., title=...))``, with
   ``section=`` and ``rules=`` if it reads its own settings section (and any hooks, tables or
   columns :class:`lra.bench.registry.Mode` lists).

Every module of this package is imported with it (:func:`lra.bench.registry.discover`), so the
mode is then known to ``modes=[...]``, the settings checks, the grid, the runner and the summary.
In config only, and only if wanted: its name in ``modes:`` of ``conf/bench.yaml`` runs it by
default, and its section there shows its defaults (without one, ``+<name>.<key>=...`` sets them).

Exit status of ``lra-bench``: 0; 1 when a case failed (status ``error`` or ``nan``; ``oom`` is a
measured outcome, ``skipped`` a stated one); 2 on a config error (:func:`lra.bench.runner.exit_code`).
"""
from __future__ import annotations

from .case import Case, Measurement
from .exactness import reference_attention
from .grid import plan
from .registry import MODES, Mode, discover, register
from .runner import exit_code, run, run_grid
from .settings import resolve_settings
from .summary import summary

discover(__name__, __path__)

__all__ = ["MODES", "Case", "Measurement", "Mode", "exit_code", "plan", "reference_attention", "register",
           "resolve_settings", "run", "run_grid", "summary"]
