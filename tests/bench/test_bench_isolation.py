"""Peak memory on CPU, per case (issue 31 item 3): a fresh process per case, its peak resident set
over its own baseline, checked against a known allocation; the caps that stop a case there.

The measure functions are module-level so that the case process can import them by reference."""
from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from lra import bench
from lra.bench.isolation import run_isolated, sendable
from lra.timing import MEMORY_METHODS, PeakMemory

pytestmark = pytest.mark.usefixtures("no_git")
CPU = torch.device("cpu")
GIB_MB = 1024.0
#: what a case's own interpreter work may add to a known allocation: the bytecode, frames and small
#: objects of `measure` and of PeakMemory itself (a few MiB measured); the tensor's pages are all
#: touched (filled), so the measurement cannot be below the allocation
OVERHEAD_MB = 64.0
SETTINGS = {"threads": 1, "knobs": {}, "seed": 0}


def hold_one_gib(case, s, device):
    """A case that holds a 1 GiB fp32 tensor (2^28 elements, every page written) at its peak."""
    with PeakMemory(device) as mem:
        x = torch.ones(2**28, dtype=torch.float32)
        mem.mark()
        x.add_(1)
    del x
    return bench.Measurement({"ms": 1.0, "peak_mem_mb": mem.peak_mb, "input_mem_mb": mem.inputs_mb},
                             {"memory_method": mem.method}, {})


def small_then_free(case, s, device):
    """Many small blocks (glibc's heap, under its mmap threshold), freed; then nothing held."""
    with PeakMemory(device) as mem:
        blocks = [bytearray(64 * 1024) for _ in range(4096)]   # 256 MiB in 64 KiB pieces
        del blocks
    return bench.Measurement({"ms": 1.0, "peak_mem_mb": mem.peak_mb}, {"memory_method": mem.method}, {})


def sleep_long(case, s, device):
    time.sleep(60)
    return bench.Measurement({"ms": 1.0}, {}, {})


def grow_forever(case, s, device):
    held = []
    for _ in range(64):
        held.append(torch.ones(2**25))   # 128 MiB each
        time.sleep(0.05)
    return bench.Measurement({"ms": 1.0}, {}, {})


def exit_early(case, s, device):
    os._exit(3)


def killed_from_outside(case, s, device):
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_case_process_that_dies_is_an_error_unless_something_killed_it():
    exited = run_isolated(exit_early, bench.Case("op_fwd", "dies", 1), SETTINGS, CPU)
    assert exited.status == "error" and "exit status 3" in exited.message
    killed = run_isolated(killed_from_outside, bench.Case("op_fwd", "killed", 1), SETTINGS, CPU)
    assert killed.status == "oom" and "out-of-memory killer" in killed.message


def test_a_case_holding_one_gib_measures_one_gib_in_its_own_process():
    case = bench.Case("op_fwd", "known", 1, 1, "float32")
    for _ in range(2):   # the second case is not hidden by the first one's freed memory
        out = run_isolated(hold_one_gib, case, SETTINGS, CPU)
        assert out.status == "ok", out.message
        m = out.measurement
        assert m.facts["memory_method"] == MEMORY_METHODS["fresh_process"] == "rss_hwm_fresh_process"
        assert GIB_MB <= m.metrics["peak_mem_mb"] <= GIB_MB + OVERHEAD_MB
        assert GIB_MB <= m.metrics["input_mem_mb"] <= GIB_MB + OVERHEAD_MB


def test_in_process_the_method_says_so_and_a_known_allocation_still_counts():
    m = hold_one_gib(None, SETTINGS, CPU)
    assert m.facts["memory_method"] == "rss_hwm_in_process"
    assert GIB_MB <= m.metrics["peak_mem_mb"] <= GIB_MB + OVERHEAD_MB


def test_small_blocks_freed_by_an_earlier_case_cannot_hide_a_later_one():
    """In one process glibc may keep freed small blocks in its heap for a later case to reuse without
    its resident set growing. Each isolated case starts without that heap and counts them all."""
    isolated = [run_isolated(small_then_free, bench.Case("op_fwd", "heap", 1), SETTINGS, CPU) for _ in range(2)]
    for out in isolated:
        assert out.status == "ok", out.message
        assert out.measurement.metrics["peak_mem_mb"] >= 240


def test_a_case_past_the_time_cap_is_stopped_and_skipped():
    start = time.monotonic()
    out = run_isolated(sleep_long, bench.Case("op_fwd", "slow", 1), SETTINGS, CPU, time_s=1)
    assert time.monotonic() - start < 30
    assert out.status == "skipped" and out.capped == "time" and "cap.time_s=1" in out.message


def test_a_case_past_the_memory_cap_is_stopped_as_oom():
    out = run_isolated(grow_forever, bench.Case("op_fwd", "greedy", 1), SETTINGS, CPU, mem_mb=300)
    assert out.status == "oom" and out.capped == "mem" and "cap.mem_mb=300" in out.message


def test_a_case_that_raises_comes_back_as_an_error_record_and_locals_run_in_process():
    def local(case, s, device):
        raise RuntimeError

    assert sendable(hold_one_gib) and not sendable(local)
    out = run_isolated(bench.MODES["op_fwd"].measure, bench.Case("op_fwd", "no-such-variant", 8, 1, "float32"),
                       {**SETTINGS, "heads": 1, "head_dim": 4, "knobs": {}}, CPU)
    assert out.status == "error" and out.measurement is None and "Traceback" in out.message
