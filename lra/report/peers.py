"""Ours against the public implementations (``scripts/peers.py`` output, ``peers*.json``): not result
records, so :func:`lra.results.load` skips them; the report reads them here and gives them a page of
their own instead of dropping them (issue 31 item 5).

A peers file is ``{device, versions, batch, d_model, heads, dtype, timing?, rows: [{variant, impl:
"ours"|"peer", seq_len, ms_fwd_bwd, ms_p10?, ms_p90?, peak_mem_mb?, backend?}, ...]}``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from .labels import length_label, sig, variant_order


@dataclass
class Peers:
    """One peers file: where it is, its setting in words, and its rows."""
    path: Path
    device: str
    setting: str
    rows: pd.DataFrame


def read_peers(paths: Iterable[Path]) -> tuple[list[Peers], list[Path]]:
    """The peers comparisons among ``paths`` (JSON files that are not records), and the other paths."""
    found, other = [], []
    for p in paths:
        try:
            data = json.loads(Path(p).read_text())
        except (OSError, ValueError):
            other.append(p)
            continue
        rows = data.get("rows") if isinstance(data, dict) else None
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) and "impl" in r for r in rows):
            other.append(p)
            continue
        dev = data.get("device") or {}
        setting = ", ".join(x for x in (
            str(data.get("dtype") or ""), f"batch {data['batch']}" if data.get("batch") else "",
            f"width {data['d_model']}" if data.get("d_model") else "", f"{data['heads']} heads" if data.get("heads") else "",
            "forward+backward", str(data.get("timing") or ""),
            f"torch {(data.get('versions') or {}).get('torch')}" if (data.get("versions") or {}).get("torch") else "")
            if x)
        found.append(Peers(Path(p), str(dev.get("name") or "unknown device"), setting, pd.DataFrame(rows)))
    return found, other


def peers_table(peers: Peers) -> pd.DataFrame:
    """Rows (variant, N, backend of ours): ours and the peer's ms per fwd+bwd call (p10-p90 where recorded),
    ours ÷ peer time, and both peak memories where recorded; sorted by variant then N."""
    r = peers.rows.copy()
    for col in ("ms_fwd_bwd", "ms_p10", "ms_p90", "peak_mem_mb", "seq_len"):
        r[col] = pd.to_numeric(r[col], errors="coerce") if col in r else np.nan
    if "backend" not in r:
        r["backend"] = None
    out = []
    for (v, n), g in r.groupby(["variant", "seq_len"], sort=False):
        ours, peer = g[g["impl"] == "ours"], g[g["impl"] == "peer"]
        if ours.empty and peer.empty:
            continue

        def ms(x):
            if x.empty or not np.isfinite(x["ms_fwd_bwd"].iloc[0]):
                return "not measured"
            t = sig(x["ms_fwd_bwd"].iloc[0])
            lo, hi = x["ms_p10"].iloc[0], x["ms_p90"].iloc[0]
            return t + (f" ({sig(lo)}–{sig(hi)})" if np.isfinite(lo) and np.isfinite(hi) else "")

        def mem(x):
            return sig(x["peak_mem_mb"].iloc[0]) if len(x) and np.isfinite(x["peak_mem_mb"].iloc[0]) else "not measured"

        a = ours["ms_fwd_bwd"].iloc[0] if len(ours) else np.nan
        b = peer["ms_fwd_bwd"].iloc[0] if len(peer) else np.nan
        backend = ours["backend"].dropna()
        out.append({"variant": v + (f" ({backend.iloc[0]})" if len(backend) else ""), "N": length_label(n),
                    "ours (ms)": ms(ours), "peer (ms)": ms(peer),
                    "ours ÷ peer": f"{a / b:.2f}×" if np.isfinite(a) and np.isfinite(b) and b > 0 else "not measured",
                    "ours (MiB)": mem(ours), "peer (MiB)": mem(peer), "_v": v, "_n": n})
    t = pd.DataFrame(out)
    if t.empty:
        return t
    order = {v: i for i, v in enumerate(variant_order(t["_v"].unique()))}
    t = t.sort_values(["_v", "_n"], key=lambda s: s.map(order) if s.name == "_v" else s).drop(columns=["_v", "_n"])
    if (t[["ours (MiB)", "peer (MiB)"]] == "not measured").all(axis=None):
        t = t.drop(columns=["ours (MiB)", "peer (MiB)"])
    return t.reset_index(drop=True)
