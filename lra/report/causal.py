""""Which attention for a decoder?": the causal answer per device (issue 34).

Per device and length of the causal op grid (bench records with ``case.causal`` true) and of the
decode grid (``mode: decode``), :func:`causal_table` gives

- the fastest exact causal kernel (``op_fwd_bwd``, causal; a tie when p10-p90 ranges overlap);
- the fastest causal variant within :data:`BPB_MARGIN` bits per byte of exact attention on the
  byte-level language model (``task: text_lm``, ``metrics.bits_per_byte`` on the held-out split),
  provided exact attention beat the unigram entropy of the bytes (``metrics.unigram_bits_per_byte``);
- where causal approximations overtake exact causal attention (from at least 3 lengths);
- the time per generated token at that context (``decode``: ``metrics.ms_per_token``), fastest and exact;

and :func:`bpb_table` the bits per byte of every causal variant. Pure: frames in, display frames out.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .answer import exact_variants, fastest_cell
from .document import fig_ref
from .fits import MIN_LENGTHS, TOO_FEW, derived_numbers
from .labels import anchor, fig_key, length_label, link, sig, variant_order
from .tables import median_by

#: "close to exact" for a decoder: within this many bits per byte of the best exact run. 0.05 bpb is
#: about 1.5% of the unigram entropy of English bytes (~4.5 bpb) and a few seeds' spread of a CPU-size run.
BPB_MARGIN = 0.05


def causal_rows(df: pd.DataFrame, device: str) -> pd.DataFrame:
    """The device's causal bench rows (any timed mode) and its decode rows."""
    d = df[(df["device_name"] == device) & (df["kind"] == "bench")]
    return d[(d["causal"].astype(bool) & d["mode"].isin(["op_fwd", "op_fwd_bwd", "model_step"]))
             | (d["mode"] == "decode")]


def has_causal(df: pd.DataFrame, device: str) -> bool:
    lm = (df["device_name"] == device) & (df["task"] == "text_lm")
    return bool(len(causal_rows(df, device)) or lm.any())


def bpb_means(df: pd.DataFrame, device: str) -> tuple[pd.Series, float]:
    """Mean held-out bits per byte per variant of the device's ok ``text_lm`` runs, and the unigram
    entropy of the training bytes (median over runs; NaN when not recorded)."""
    lm = df[(df["device_name"] == device) & (df["task"] == "text_lm") & (df["status"] == "ok")]
    lm = lm[lm["bits_per_byte"].notna()]
    return lm.groupby("variant")["bits_per_byte"].mean(), float(lm["unigram_bits_per_byte"].median())


def bpb_evidence(df: pd.DataFrame, device: str) -> tuple[set[str] | None, str]:
    """The variants within :data:`BPB_MARGIN` of exact attention (exact ones included), or None and why."""
    means, unigram = bpb_means(df, device)
    if means.empty:
        return None, "no byte-level LM run on this device"
    exact = exact_variants(df)
    ex = means[means.index.isin(exact)]
    if ex.empty:
        return None, "no exact-attention LM run"
    best = float(ex.min())
    if np.isfinite(unigram) and best >= unigram:
        return None, f"exact attention did not beat the unigram baseline ({best:.3f} vs {unigram:.3f} bpb)"
    return set(exact) | {v for v, b in means.items() if b <= best + BPB_MARGIN}, ""


def bpb_table(df: pd.DataFrame, device: str) -> pd.DataFrame:
    """Variant rows: mean ± std held-out bits per byte over seeds, runs, gap to the best exact run;
    sorted by bits per byte (lower is better), the best in bold; the unigram baseline as a last row."""
    lm = df[(df["device_name"] == device) & (df["task"] == "text_lm")]
    if lm.empty:
        return pd.DataFrame()
    means, unigram = bpb_means(df, device)
    exact = exact_variants(df)
    best_exact = float(means[means.index.isin(exact)].min()) if means.index.isin(exact).any() else np.nan
    rows = {}
    for v in sorted(variant_order(lm["variant"].unique()), key=lambda v: (v not in means, means.get(v, 0), v)):
        g = lm[lm["variant"] == v]
        ok = g[(g["status"] == "ok") & g["bits_per_byte"].notna()]["bits_per_byte"]
        if ok.empty:
            rows[v] = {"bits per byte": "/".join(sorted(set(g["status"]) - {"ok"})) or "no result",
                       "runs": str(len(g)), "vs exact": "not run"}
            continue
        text = f"{ok.mean():.3f}" + (f" ± {ok.std(ddof=1):.3f}" if len(ok) > 1 else "")
        rows[v] = {"bits per byte": f"**{text}**" if v == means.idxmin() else text, "runs": str(len(ok)),
                   "vs exact": "(exact)" if v in exact else
                   f"{ok.mean() - best_exact:+.3f}" if np.isfinite(best_exact) else "no exact run"}
    out = pd.DataFrame.from_dict(rows, orient="index")
    if np.isfinite(unigram):
        out.loc["unigram baseline"] = [f"{unigram:.3f}", "", f"{unigram - best_exact:+.3f}"
                                       if np.isfinite(best_exact) else ""]
    out.index.name = "variant"
    return out


def _times(rows: pd.DataFrame, mode: str, value: str = "time_ms") -> pd.DataFrame:
    r = rows[(rows["mode"] == mode) & rows["seq_len"].notna()]
    lo, hi = ("time_p10", "time_p90") if value == "time_ms" else (None, None)
    return median_by(r, ["seq_len", "variant"], value, lo, hi)


def causal_table(df: pd.DataFrame, device: str) -> tuple[pd.DataFrame, list[str]]:
    """The decoder answer of one device (a row per length) and the notes under it."""
    rows = causal_rows(df, device)
    exact = exact_variants(df)
    op = rows[(rows["mode"] == "op_fwd_bwd") & rows["seq_len"].notna()]
    times = _times(rows, "op_fwd_bwd")
    dec = rows[rows["mode"] == "decode"].assign(time_ms=lambda r: r["ms_per_token"])
    decode = median_by(dec[dec["seq_len"].notna()], ["seq_len", "variant"], "time_ms")
    qualified, why = bpb_evidence(df, device)
    der = derived_numbers(df, device, "op_fwd_bwd", causal=True)
    ref = der["reference"].dropna().iloc[0] if der["reference"].notna().any() else None
    target = f"[[page:ops]]#{anchor('causal', device)}"
    lengths = sorted(set(times["seq_len"]) | set(decode["seq_len"]))
    cols = ["fastest exact causal kernel", f"fastest within {BPB_MARGIN:g} bits/byte of exact",
            f"overtakes exact ({ref}) from" if ref else "overtakes exact attention", "decode step (ms/token)"]
    out = {}
    for n in lengths:
        at = times[times["seq_len"] == n]
        row = {cols[0]: fastest_cell(at, exact, op, target, "ms/call", exact, figure=fig_key("causal_time", device))
               if len(at) else "not timed at this N"}
        if qualified is None:
            row[cols[1]] = link(why, f"[[page:training]]#{anchor('lm', device)}")
        else:
            row[cols[1]] = fastest_cell(at, qualified, op, target, "ms/call", exact, figure=fig_key("causal_time", device)) \
                if len(at) else "not timed at this N"
        row[cols[2]] = _cross(der, exact, ref, n, device)
        row[cols[3]] = _decode_cell(decode[decode["seq_len"] == n], exact, device)
        out[length_label(n)] = row
    table = pd.DataFrame.from_dict(out, orient="index", columns=cols)
    table.index.name = "context N"
    lm_target = f"[[page:training]]#{anchor('lm', device)}"
    notes = [f"Causal attention (a query sees keys ≤ its position) for every variant that admits it; "
             f"{cols[1]}: on the byte-level language model of IMDb reviews (held-out bits per byte, "
             f"{link('table', lm_target)}); decode step: the time to generate one token at context N "
             f"with a KV cache (softmax variants) or the running state (linear ones), fastest variant and exact."]
    if qualified is None:
        notes.append(f"Bits-per-byte column: no answer: {why}.")
    return table, notes


def _cross(der: pd.DataFrame, exact: set[str], ref: str | None, n: float, device: str) -> str:
    if ref is None:
        return "no causal op benchmark"
    approx = der[~der["variant"].isin(exact)]
    if len(approx) and (approx["compared"] < MIN_LENGTHS).all():
        return f"{TOO_FEW} ({int(approx['compared'].max())})"
    won = approx[approx["crossover"].notna() & (approx["compared"] >= MIN_LENGTHS) & (approx["crossover"] <= n)]
    if won.empty:
        return f"none up to {length_label(n)}"
    return ", ".join(f"{r.variant} from {length_label(r.crossover)}"
                     for r in won.sort_values("crossover", kind="stable").itertuples()) \
        + f" · {fig_ref(fig_key('causal_time', device))}"


def _decode_cell(at: pd.DataFrame, exact: set[str], device: str) -> str:
    if at.empty:
        return "not measured"
    ok = at[(at["status"] == "ok") & at["value"].notna()].sort_values("value")
    if ok.empty:
        return "none ran: " + ", ".join(f"{r.variant} {r.status}" for r in at.itertuples())
    best = ok.iloc[0]
    ex = ok[ok["variant"].isin(exact)]
    text = f"{best['variant']} {sig(best['value'])}"
    if len(ex) and ex.iloc[0]["variant"] != best["variant"]:
        text += f" (exact: {ex.iloc[0]['variant']} {sig(ex.iloc[0]['value'])})"
    return text + f" · {fig_ref(fig_key('decode', device))}"


def causal_fits_line(df: pd.DataFrame, device: str) -> str | None:
    """Largest context that fits in the causal op grid, variants grouped by it (as the main answer's line)."""
    der = derived_numbers(df, device, "op_fwd_bwd", causal=True)
    if der.empty:
        return None
    parts: dict[str, list[str]] = {}
    for r in der.itertuples():
        key = "none" if pd.isna(r.largest_ok) else length_label(r.largest_ok)
        if pd.notna(r.first_failed):
            key += f" ({r.first_failed_status} at {length_label(r.first_failed)})"
        parts.setdefault(key, []).append(r.variant + (f" {sig(r.mem_at_largest)} MiB" if np.isfinite(r.mem_at_largest)
                                                      else ""))
    return "; ".join(f"**{k}**: {', '.join(v)}" for k, v in parts.items())
