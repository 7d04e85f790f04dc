"""Side-by-side forward+backward timing of lra-bench variants against public peer implementations.

One self-attention layer (projections included, d_model 512, 8 heads of 64): ours =
lra.model.MultiHeadAttention with the variant; peers = performer-pytorch SelfAttention,
reformer-pytorch LSHSelfAttention, linformer LinformerSelfAttention, nystrom-attention
NystromAttention, Hugging Face BigBird block-sparse self-attention. Module and input in one dtype
(no autocast, except where PEER_NOTES says), both in train mode.

Ours and the peer are timed in one interleaved run per (variant, length) (lra.timing.time_interleaved:
warm-up calls first, then rounds with one call of each, the order alternating), so that drift on a
shared machine falls on both alike; the median of the rounds is reported, with CUDA events on a GPU
and time.perf_counter on the CPU. ``ratio`` = ours / peer. Peak memory (CUDA only): the most
allocated during one more forward+backward above what was allocated before it (the call's working
memory: activations, saved tensors, gradients; the modules and input excluded, as both are alive).

  python scripts/peers.py --out peers.json                       # CUDA, bf16, B=8, N 1K..8K
  python scripts/peers.py --device cpu --out peers-cpu.json      # CPU, fp32, B=1, N 1K, 2K
  python scripts/peers.py --variants performer reformer --lengths 1024 4096 8192 16384 --backend reference
"""
from __future__ import annotations

import argparse
import json
import traceback

import torch

from lra.model import EncoderConfig, MultiHeadAttention
from lra.results import device_info, versions
from lra.timing import PeakMemory, time_interleaved

D_MODEL, HEADS = 512, 8
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
DEFAULTS = {"cuda": {"dtype": "bfloat16", "batch": 8, "lengths": [1024, 2048, 4096, 8192], "repeats": 10, "warmup": 3},
            "cpu": {"dtype": "float32", "batch": 1, "lengths": [1024, 2048], "repeats": 5, "warmup": 1}}


def ours(name, n, **knobs):
    cfg = EncoderConfig(vocab_size=1, num_classes=1, max_length=n, d_model=D_MODEL, heads=HEADS, attention=name,
                        attention_cfg=knobs, pooling="mean")
    mha = MultiHeadAttention(cfg)
    return lambda x: mha(x, None), mha


def peer(name, n, batch, device):
    if name == "performer":
        from performer_pytorch import SelfAttention
        m = SelfAttention(dim=D_MODEL, heads=HEADS, dim_head=64, nb_features=256, causal=False)
        return lambda x: m(x), m
    if name == "reformer":
        from reformer_pytorch import LSHSelfAttention
        m = LSHSelfAttention(dim=D_MODEL, heads=HEADS, bucket_size=64, n_hashes=2, causal=False)
        return lambda x: m(x), m
    if name == "linformer":
        from linformer import LinformerSelfAttention
        m = LinformerSelfAttention(dim=D_MODEL, seq_len=n, heads=HEADS, k=256, share_kv=False)
        return lambda x: m(x), m
    if name == "nystrom":
        from nystrom_attention import NystromAttention
        m = NystromAttention(dim=D_MODEL, dim_head=64, heads=HEADS, num_landmarks=64, pinv_iterations=6,
                             residual=True, residual_conv_kernel=33)

        def call(x):  # see PEER_NOTES["nystrom"]
            low = x.dtype in (torch.float16, torch.bfloat16)
            with torch.autocast(x.device.type, dtype=x.dtype if low else torch.bfloat16, enabled=low):
                return m(x)

        return call, m
    if name == "bigbird":
        from transformers import BigBirdConfig
        from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention, BigBirdModel
        cfg = BigBirdConfig(hidden_size=D_MODEL, num_attention_heads=HEADS, block_size=64, num_random_blocks=3,
                            attention_type="block_sparse", max_position_embeddings=n)
        m = BigBirdBlockSparseAttention(cfg, seed=0)
        mask = torch.ones(batch, n, device=device)
        blocked, band, from_mask, to_mask = BigBirdModel.create_masks_for_block_sparse_attn(mask, 64)

        def call(x):
            out = m(x, band_mask=band.to(x.dtype), from_mask=from_mask.to(x.dtype), to_mask=to_mask.to(x.dtype),
                    from_blocked_mask=blocked.to(x.dtype), to_blocked_mask=blocked.to(x.dtype))
            return out[0] if isinstance(out, tuple) else out

        return call, m
    raise KeyError(name)


# How a peer is run when that differs from "module and input in one dtype"; copied into its rows.
PEER_NOTES = {
    # Its iterative pseudo-inverse builds an fp32 identity (torch.eye without dtype), so `13 * I - xz`
    # is promoted to fp32 and the next bf16 @ fp32 matmul fails ("expected scalar type BFloat16 but
    # found Float"). Module and input stay bf16; autocast runs those matmuls in bf16 (its softmaxes
    # then run in fp32, as autocast does for softmax). The package itself is not changed.
    "nystrom": "in bf16/fp16: run under torch.autocast: its pinv mixes an fp32 identity into bf16 matmuls",
}

OURS_KNOBS = {"performer": {"num_features": 256}, "reformer": {"bucket_size": 64, "n_hashes": 2},
              "linformer": {"k": 256}, "nystrom": {"landmarks": 64, "pinv_iterations": 6, "conv_kernel": 33},
              "bigbird": {"block_size": 64, "random_blocks": 3}}
BACKEND_VARIANTS = ("performer", "reformer", "linformer", "nystrom", "linear")  # have the `backend` knob


def fwd_bwd(fn, x):
    def step():
        fn(x).float().sum().backward()
        x.grad = None
    return step


def working_memory_mb(step, device) -> float | None:
    """The most allocated during one ``step()`` above what was allocated before it (CUDA), MiB."""
    with PeakMemory(device) as mem:
        step()
    return mem.peak_mb


def compare(name, n, args, device, dtype) -> list[dict]:
    """Rows for ours and the peer at one length, timed in one interleaved run."""
    rows = {who: {"variant": name, "impl": who, "seq_len": n} for who in ("ours", "peer")}
    if name in PEER_NOTES and dtype != torch.float32:
        rows["peer"]["note"] = PEER_NOTES[name]
    knobs = dict(OURS_KNOBS[name])
    if args.backend and name in BACKEND_VARIANTS:
        knobs["backend"] = args.backend
    rows["ours"]["knobs"] = knobs
    steps, modules = {}, {}
    for who in ("ours", "peer"):
        try:
            fn, module = ours(name, n, **knobs) if who == "ours" else peer(name, n, args.batch, device)
            module.to(device, dtype).train()
            x = torch.randn(args.batch, n, D_MODEL, device=device, dtype=dtype, requires_grad=True)
            steps[who], modules[who] = fwd_bwd(fn, x), module
            steps[who]()                                   # a failing implementation fails here
        except Exception as err:  # noqa: BLE001 - a peer that fails is a row, not a crash
            rows[who]["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            traceback.print_exc(limit=2)
            steps.pop(who, None)
    if steps:
        timings = time_interleaved(steps, warmup=args.warmup, repeats=args.repeats, device=device)
        for who, t in timings.items():
            rows[who].update(ms_fwd_bwd=round(t.median_ms, 4), ms_p10=round(t.p10_ms, 4), ms_p90=round(t.p90_ms, 4),
                             timer=t.timer, peak_mem_mb=working_memory_mb(steps[who], device))
        backend = getattr(modules.get("ours") and modules["ours"].attention, "last_backend", None)
        rows["ours"]["backend"] = backend
    if "ms_fwd_bwd" in rows["ours"] and "ms_fwd_bwd" in rows["peer"]:
        rows["ours"]["ratio"] = round(rows["ours"]["ms_fwd_bwd"] / rows["peer"]["ms_fwd_bwd"], 4)
    return list(rows.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="peers.json")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=list(DTYPES), help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--batch", type=int, help="default: 8 on CUDA, 1 on CPU")
    ap.add_argument("--lengths", type=int, nargs="+")
    ap.add_argument("--variants", nargs="+", default=list(OURS_KNOBS))
    ap.add_argument("--backend", choices=["auto", "reference", "fast"],
                    help="our variants' backend knob (default: the config's, auto)")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--warmup", type=int)
    args = ap.parse_args()
    device = torch.device(args.device)
    defaults = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    for key in ("dtype", "batch", "lengths", "repeats", "warmup"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    unknown = [v for v in args.variants if v not in OURS_KNOBS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; choose from {list(OURS_KNOBS)}")
    dtype = DTYPES[args.dtype]
    rows = []
    for name in args.variants:
        for n in args.lengths:
            for row in compare(name, n, args, device, dtype):
                print(json.dumps(row), flush=True)
                rows.append(row)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump({"device": device_info(device), "versions": versions(), "batch": args.batch, "d_model": D_MODEL,
                   "heads": HEADS, "dtype": args.dtype, "timing": "interleaved, median of rounds",
                   "repeats": args.repeats, "warmup": args.warmup, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
