#!/usr/bin/env bash
# Here, before a device call: fetch the wheels the device lacks into .whl/ and, when a pending call
# carries .data, copy the IMDb reviews into .data/imdb; then print the next call's `run` arguments.
#   bash scripts/device/prepare.sh [CALL_ID]
set -euo pipefail
top=$(git rev-parse --show-toplevel)
cd "$top"
if ! ls .whl/*.whl >/dev/null 2>&1; then
    # hydra/omegaconf/submitit (wheels.sh's list) plus what lra imports that the device image may lack
    bash ../shared/device/wheels.sh tqdm tabulate
fi
if [ ! -d .data/imdb ] && [ -d ../shared/data/imdb ]; then
    mkdir -p .data && cp -r ../shared/data/imdb .data/imdb
fi
du -sh .whl .data 2>/dev/null || true
python3 scripts/device/queue.py next "$@"
