"""One case in a fresh process of its own, stopped at the caps.

Why: on CPU a case's peak memory is the process's peak resident set over its baseline
(:class:`lra.timing.PeakMemory`), and in a process that ran earlier cases glibc's heap keeps the
pages those freed, so a later case could reuse them without its resident set growing: its use
would be hidden. A process per case has no earlier heap. It also lets a case that passes a cap be
stopped (killed) and recorded, where an in-process case could only be waited for.

How: :func:`run_isolated` starts the case in a child of a multiprocessing *forkserver* (the
server loaded :mod:`lra.bench._server` once -- the bench, and the lazily imported libraries warmed
on tiny tensors with one thread; each child is a fork of it, with no heap of earlier cases and no
OpenMP thread pool -- forking a process whose OpenMP pool has run hangs the child's first
parallel region). The child sets the run's CPU threads, reports its
resident set, measures the case with the mode's ``measure`` (sent by reference: module and name)
and sends back the :class:`~lra.bench.case.Measurement` or what went wrong. Meanwhile the parent
polls the child's resident set every :data:`POLL_S` seconds and its elapsed time: past
``cap.mem_mb`` over the child's baseline it kills it (``oom``), past ``cap.time_s`` too
(``skipped``). A child killed by SIGKILL that the parent did not kill was most likely taken by the
kernel's out-of-memory killer (``oom``). Cost per case: the fork and the poll, no import.
"""
from __future__ import annotations

import multiprocessing
import pickle
import signal
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..devices import set_job_threads
from ..timing import is_oom, mark_fresh_process, rss_kib
from .case import Case, Measurement, SkipCase
from .measuring import first_line

#: seconds between two looks at the child's resident set and clock
POLL_S = 0.05
#: seconds a case process that has answered (or closed its pipe) gets to exit before it is killed
EXIT_WAIT_S = 10.0
#: what every case process has loaded before it is forked (the forkserver's preload)
PRELOAD = ["lra.bench._server"]
_context = None


@dataclass
class Outcome:
    """What happened to an isolated case: the measurement (when it finished), its status and
    message (``ok`` and the measurement's own otherwise), ``wall_s`` (the case's seconds in its
    process) and ``capped`` (``"time"``/``"mem"`` when a cap stopped it)."""

    measurement: Measurement | None
    status: str
    message: str | None
    wall_s: float | None
    capped: str | None = None


def sendable(measure: Callable) -> bool:
    """Whether ``measure`` can reach a case process: picklable by reference (a module-level
    function of an importable module). A function defined inside another (a test's stand-in) or in
    ``__main__`` runs in-process instead."""
    if getattr(measure, "__module__", None) == "__main__":   # a script's: the case process cannot import it
        return False
    try:
        pickle.dumps(measure)
        return True
    except (pickle.PicklingError, AttributeError, TypeError):
        return False


def context():
    """The forkserver context (spawn where there is no forkserver), its server preloading :data:`PRELOAD`."""
    global _context
    if _context is None:
        try:
            _context = multiprocessing.get_context("forkserver")
            _context.set_forkserver_preload(PRELOAD)
        except ValueError:  # no forkserver on this platform
            _context = multiprocessing.get_context("spawn")
    return _context


def _start_threads() -> None:
    """Start this process's thread pools (OpenMP, MKL) before the baseline, so that their stacks
    count as the process's, not as the case's memory: a GEMM and an elementwise op large enough to
    run in parallel (64K elements)."""
    x = torch.ones(256, 256)
    torch.mm(x, x).add_(1)


def _child(conn, measure: Callable, case: Case, s: dict, device: str) -> None:
    """The case process: threads, baseline, measure, send the result (never raises)."""
    mark_fresh_process()
    set_job_threads(s.get("threads", "auto"))
    _start_threads()
    conn.send(("started", rss_kib("VmRSS")))
    start = time.perf_counter()
    try:
        m = measure(case, s, torch.device(device))
        message: tuple = ("done", m)
    except SkipCase as err:
        message = ("skipped", str(err))
    except BaseException as err:  # noqa: BLE001 - every failure goes back to the parent as data
        message = ("raised", is_oom(err), first_line(err), traceback.format_exc(limit=6))
    conn.send((*message, round(time.perf_counter() - start, 3)))
    conn.close()


def run_isolated(measure: Callable, case: Case, s: dict, device: torch.device, *, time_s: float = 0,
                 mem_mb: float = 0) -> Outcome:
    """Measure ``case`` with ``measure`` in a fresh process, stopped past ``time_s`` seconds or
    ``mem_mb`` MiB over its baseline resident set (0: no cap). Never raises for the case's faults."""
    ctx = context()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, measure, case, s, str(device)), daemon=True,
                       name=f"lra-bench {case.label()}")
    proc.start()
    send.close()
    started, base_kib, result, capped = None, None, None, None
    try:
        while result is None and capped is None:
            if recv.poll(POLL_S):
                try:
                    msg = recv.recv()
                except EOFError:   # the child is gone without a result
                    break
                if msg[0] == "started":
                    started, base_kib = time.monotonic(), msg[1]
                else:
                    result = msg
                continue
            if not proc.is_alive() and not recv.poll(0):
                break
            if started is not None and time_s and time.monotonic() - started > time_s:
                capped = "time"
            elif base_kib is not None and mem_mb:
                rss = rss_kib("VmRSS", proc.pid)
                if rss is not None and (rss - base_kib) / 1024 > mem_mb:
                    capped = "mem"
    finally:
        if capped is None:   # a child that sent its result, or closed its end, ends on its own
            proc.join(timeout=EXIT_WAIT_S)
        killed = proc.is_alive()
        if killed:
            proc.kill()
        proc.join(timeout=30)
        recv.close()
    elapsed = None if started is None else round(time.monotonic() - started, 3)
    if killed and capped is None and result is None:
        return Outcome(None, "error", f"the case's process stopped answering; stopped after {EXIT_WAIT_S:g} s",
                       elapsed)
    if capped == "time":
        return Outcome(None, "skipped", f"time cap: still running after cap.time_s={time_s:g} s; stopped", elapsed,
                       capped)
    if capped == "mem":
        return Outcome(None, "oom", f"memory cap: its resident set grew more than cap.mem_mb={mem_mb:g} MiB over "
                                    "its baseline; stopped", elapsed, capped)
    if result is None:
        return _died(proc.exitcode, elapsed)
    return _from_message(result)


def _from_message(msg: tuple[Any, ...]) -> Outcome:
    kind, wall = msg[0], msg[-1]
    if kind == "done":
        m = msg[1]
        return Outcome(m, m.status, m.message, wall)
    if kind == "skipped":
        return Outcome(None, "skipped", msg[1], wall)
    oom, line, trace = msg[1], msg[2], msg[3]
    return Outcome(None, "oom" if oom else "error", line if oom else f"{line}\n{trace}", wall)


def _died(exitcode: int | None, elapsed: float | None) -> Outcome:
    """A case process that ended without sending its result."""
    if exitcode == -signal.SIGKILL:
        return Outcome(None, "oom", "the case's process was killed (SIGKILL) by something other than lra-bench: "
                                    "most likely the kernel's out-of-memory killer", elapsed)
    how = f"signal {signal.Signals(-exitcode).name}" if exitcode is not None and exitcode < 0 else \
        f"exit status {exitcode}"
    return Outcome(None, "error", f"the case's process ended ({how}) without a result", elapsed)
