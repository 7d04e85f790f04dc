"""Side-by-side forward+backward timing of lra-bench variants against public peer implementations.

One self-attention layer (projections included, d_model 512, 8 heads of 64) at B=8, bf16, on CUDA:
ours = lra.model.MultiHeadAttention with the variant; peers = performer-pytorch SelfAttention,
reformer-pytorch LSHSelfAttention, linformer LinformerSelfAttention, nystrom-attention
NystromAttention, Hugging Face BigBird block-sparse self-attention. Median of CUDA-event timings
after warm-up. A peer that cannot run as given in bf16 is run as stated in PEER_NOTES, and its rows
carry that note (nystrom-attention: under torch.autocast).
Usage: python scripts/peers.py --out peers.json [--lengths 1024 2048 4096 8192]
"""
from __future__ import annotations

import argparse
import json
import statistics
import traceback

import torch

from lra.model import EncoderConfig, MultiHeadAttention
from lra.results import device_info, versions

D_MODEL, HEADS, BATCH = 512, 8, 8


def ours(name, n, **knobs):
    cfg = EncoderConfig(vocab_size=1, num_classes=1, max_length=n, d_model=D_MODEL, heads=HEADS, attention=name,
                        attention_cfg=knobs, pooling="mean")
    mha = MultiHeadAttention(cfg)
    return lambda x: mha(x, None), mha


def peer(name, n):
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
        mask = torch.ones(BATCH, n, device="cuda")
        blocked, band, from_mask, to_mask = BigBirdModel.create_masks_for_block_sparse_attn(mask, 64)

        def call(x):
            out = m(x, band_mask=band.to(x.dtype), from_mask=from_mask.to(x.dtype), to_mask=to_mask.to(x.dtype),
                    from_blocked_mask=blocked.to(x.dtype), to_blocked_mask=blocked.to(x.dtype))
            return out[0] if isinstance(out, tuple) else out

        return call, m
    raise KeyError(name)


# How a peer is run when that differs from "module and input in bf16"; copied into its rows.
PEER_NOTES = {
    # Its iterative pseudo-inverse builds an fp32 identity (torch.eye without dtype), so `13 * I - xz`
    # is promoted to fp32 and the next bf16 @ fp32 matmul fails ("expected scalar type BFloat16 but
    # found Float"). Module and input stay bf16; autocast runs those matmuls in bf16 (its softmaxes
    # then run in fp32, as autocast does for softmax). The package itself is not changed.
    "nystrom": "run under torch.autocast(bf16): its pinv mixes an fp32 identity into bf16 matmuls",
}

OURS_KNOBS = {"performer": {"num_features": 256}, "reformer": {"bucket_size": 64, "n_hashes": 2},
              "linformer": {"k": 256}, "nystrom": {"landmarks": 64, "pinv_iterations": 6, "conv_kernel": 33},
              "bigbird": {"block_size": 64, "random_blocks": 3}}


def time_fwd_bwd(fn, module, n, repeats=10, warmup=3):
    module.to("cuda", torch.bfloat16).train()
    x = torch.randn(BATCH, n, D_MODEL, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    for _ in range(warmup):
        fn(x).float().sum().backward()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(x).float().sum().backward()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="peers.json")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--variants", nargs="+", default=list(OURS_KNOBS))
    args = ap.parse_args()
    rows = []
    for name in args.variants:
        for n in args.lengths:
            for who in ("ours", "peer"):
                row = {"variant": name, "impl": who, "seq_len": n}
                if who == "peer" and name in PEER_NOTES:
                    row["note"] = PEER_NOTES[name]
                try:
                    fn, module = ours(name, n, **OURS_KNOBS[name]) if who == "ours" else peer(name, n)
                    row["ms_fwd_bwd"], row["peak_mem_mb"] = time_fwd_bwd(fn, module, n)
                except Exception as err:  # noqa: BLE001 - a peer that fails is a row, not a crash
                    row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                    traceback.print_exc(limit=2)
                torch.cuda.empty_cache()
                print(json.dumps(row), flush=True)
                rows.append(row)
    with open(args.out, "w") as f:
        json.dump({"device": device_info("cuda"), "versions": versions(), "batch": BATCH, "d_model": D_MODEL,
                   "heads": HEADS, "dtype": "bfloat16", "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
