#!/usr/bin/env bash
# Here, before a device call: fetch the wheels the device lacks into .whl/ and, when a pending call
# carries .data, copy the IMDb reviews into .data/imdb; then print the next call's `run` arguments.
#   bash scripts/device/prepare.sh [CALL_ID]
set -euo pipefail
top=$(git rev-parse --show-toplevel)
cd "$top"
if ! ls .whl/*.whl >/dev/null 2>&1; then
    # hydra/omegaconf/submitit (wheels.sh's list), what lra imports that the device image may lack, and
    # the public implementations scripts/peers.py compares with (pure Python; transformers for BigBird)
    bash ../shared/device/wheels.sh tqdm tabulate markdown \
        performer-pytorch==1.1.4 reformer-pytorch==1.4.4 linformer==0.2.3 nystrom-attention==0.0.14 \
        einops local-attention axial-positional-embedding product-key-memory colt5-attention hyper-connections \
        torch-einops-utils transformers tokenizers safetensors huggingface-hub hf-xet regex pyyaml requests \
        filelock fsspec packaging typing-extensions charset-normalizer idna urllib3 certifi
fi
if [ ! -d .data/imdb ] && [ -d ../shared/data/imdb ]; then
    mkdir -p .data && cp -r ../shared/data/imdb .data/imdb
fi
du -sh .whl .data 2>/dev/null || true
python3 scripts/device/queue.py next "$@"
