#!/usr/bin/env bash
# Run lra-bench within one device call and bring its records back as one file.
#
#   bash scripts/device/bench.sh BUDGET_S [hydra overrides...]
#   e.g. TAG=a bash scripts/device/bench.sh 480 'variants=[flash,full,local,bigbird]' repeats=10
#
# Runs `python3 -m lra.cli.bench progress=false <overrides>` under `timeout` (BUDGET_S minus $PACK_S,
# default 15 s). Every case writes its record as soon as it is measured, so a run stopped by the
# timeout still brings back the cases it finished. Output in $OUT (default ./out), two files:
#   bench-<device>[-TAG].tgz   records/*.json (one per case, named mode-variant-N-B-dtype)
#   bench-<device>[-TAG].log   the run's output (summary tables at the end)
# <device> is LRA_DEVICE_SLUG from setup.sh (nvidia-h100-80gb, nvidia-h200, cpu). TAG ($TAG, optional)
# names the part of a grid split over several calls. Sources setup.sh if the caller has not.
set -u
if [ $# -lt 1 ]; then
    sed -n '2,14p' "$0"
    exit 2
fi
BUDGET_S=$1
shift
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=setup.sh
. "$HERE/setup.sh"
cd "$LRA_REPO" || exit 2

START=$(date +%s)
PACK_S=${PACK_S:-15}
NAME="bench-${LRA_DEVICE_SLUG:-unknown}${TAG:+-$TAG}"
OUT=${OUT:-$PWD/out}
STAGE=${STAGE:-/tmp/lra-device/$NAME}
mkdir -p "$OUT" "$STAGE"
LIMIT=$((BUDGET_S - PACK_S - ($(date +%s) - START)))
if [ "$LIMIT" -le 0 ]; then
    echo "bench.sh: budget ${BUDGET_S}s leaves no time to run" >&2
    exit 2
fi
echo "[bench] $NAME: limit ${LIMIT}s, overrides: $*"
set -o pipefail
timeout -k 20 "$LIMIT" python3 -m lra.cli.bench progress=false "hydra.run.dir=$STAGE/job" "$@" 2>&1 | tee "$OUT/$NAME.log"
rc=$?
if [ "$rc" -eq 124 ]; then
    echo "[bench] stopped at the ${LIMIT}s limit: the records below are the cases it finished" | tee -a "$OUT/$NAME.log"
fi
n=0
if [ -d "$STAGE/job/records" ]; then
    n=$(find "$STAGE/job/records" -name '*.json' | wc -l)
    tar -czf "$OUT/.$NAME.tgz.part" -C "$STAGE/job" records && mv -f "$OUT/.$NAME.tgz.part" "$OUT/$NAME.tgz"
fi
python3 - "$STAGE/job/records" <<'PY' | tee -a "$OUT/$NAME.log"
import collections, json, pathlib, sys
root = pathlib.Path(sys.argv[1])
recs = [json.loads(p.read_text()) for p in sorted(root.glob("*.json"))] if root.is_dir() else []
count = collections.Counter((r["case"].get("mode"), r["status"]) for r in recs)
print("[bench] records by (mode, status):", dict(sorted(count.items(), key=str)) or "none")
PY
echo "[bench] rc $rc, $n records in $OUT/$NAME.tgz, $(( $(date +%s) - START ))s"
exit "$rc"
