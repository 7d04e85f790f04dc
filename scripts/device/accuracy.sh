#!/usr/bin/env bash
# Train several attention variants on one LRA task within one device call.
#
#   [JOBS=k] bash scripts/device/accuracy.sh TASK BUDGET_S VARIANT [VARIANT...] [-- hydra overrides...]
#
# Runs `python3 -m lra.cli.train task=TASK attention=V trainer.progress=false <overrides>` for each
# variant, JOBS at a time (default 1: one after another). With JOBS=k > 1 the runs share the GPU
# (`trainer.device=packed trainer.jobs_per_gpu=k`; $PACK_DEVICE replaces `packed`, e.g. `cpu` for a
# test without a GPU) and the CPU cores (LRA_CONCURRENT_JOBS=k): for accuracy only; their records keep
# steps/s out of the metrics (case.packed), since jobs sharing a GPU time each other's load. The first
# k runs start together and build a generated dataset once (the cache lock; later runs read it).
# Before starting a run it estimates the run's wall time from the runs so far (the longest; before
# any has ended: $EST_S, default 0) and starts it only if that fits in what is left of BUDGET_S
# (minus $PACK_S, default 20 s, kept for packing); each run also gets a `timeout` of what is left,
# so one hung run cannot eat the call (a timed-out run writes a checkpoint but no record).
#
# Output, in $OUT (default ./out), two files whatever happens:
#   accuracy-TASK[-TAG].tgz  every record (records/train-TASK-V[-TAG].json) and log (logs/TASK-V.log)
#                            so far; re-packed after every run, so a finished run's record comes back
#                            even if a later run crashes or the call is killed
#   accuracy-TASK[-TAG].txt  one line per variant: status, accuracy, steps/s, wall time
# TAG ($TAG, optional) tells apart calls with other settings (e.g. TAG=small for recipe=small).
# Work folders (Hydra job dirs) are under $STAGE (default /tmp/lra-device/accuracy-TASK[-TAG]).
# Sources setup.sh if the caller has not.
set -u
if [ $# -lt 3 ]; then
    sed -n '2,25p' "$0"
    exit 2
fi
TASK=$1
BUDGET_S=$2
shift 2
VARIANTS=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    VARIANTS+=("$1")
    shift
done
[ $# -gt 0 ] && shift   # the "--"
OVERRIDES=("$@")
if [ ${#VARIANTS[@]} -eq 0 ]; then
    echo "accuracy.sh: no variants given" >&2
    exit 2
fi
JOBS=${JOBS:-1}
case "$JOBS" in ''|*[!0-9]*|0) echo "accuracy.sh: JOBS=$JOBS is not a positive integer" >&2; exit 2 ;; esac

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=setup.sh
. "$HERE/setup.sh"
cd "$LRA_REPO" || exit 2

START=$(date +%s)
DEADLINE=$((START + BUDGET_S))
PACK_S=${PACK_S:-20}
EST_S=${EST_S:-0}
SUFFIX="${TAG:+-$TAG}"
NAME="accuracy-$TASK$SUFFIX"
OUT=${OUT:-$PWD/out}
STAGE=${STAGE:-/tmp/lra-device/$NAME}
mkdir -p "$OUT" "$STAGE/pack/records" "$STAGE/pack/logs" "$STAGE/jobs" "$STAGE/rc"
SUMMARY="$STAGE/pack/summary.txt"
: >"$SUMMARY"
PACKED=()
if [ "$JOBS" -gt 1 ]; then
    PACKED=("trainer.device=${PACK_DEVICE:-packed}" "trainer.jobs_per_gpu=$JOBS")
    export LRA_CONCURRENT_JOBS=$JOBS
    # trainer.compile: the jobs compile at once; each gets its share of the cores for inductor's workers
    _cores=$(nproc 2>/dev/null || echo 1)
    export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-$(( _cores / JOBS > 0 ? _cores / JOBS : 1 ))}
fi

pack() {   # everything so far -> $OUT/$NAME.tgz (atomically) and $OUT/$NAME.txt
    tar -czf "$OUT/.$NAME.tgz.part" -C "$STAGE/pack" records logs summary.txt && mv -f "$OUT/.$NAME.tgz.part" "$OUT/$NAME.tgz"
    cp -f "$SUMMARY" "$OUT/$NAME.txt"
}

summarize() {   # VARIANT RC WALL RECORD -> one line
    python3 - "$@" <<'PY'
import json, os, sys
variant, rc, wall, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
fmt = lambda v, f: "-" if v is None else format(v, f)
if os.path.isfile(path):
    r = json.load(open(path))
    m, case = r.get("metrics", {}), r.get("case", {})
    msg = (r.get("message") or "").splitlines()[0][:100] if r.get("message") else ""
    packed = case.get("packed")
    speed = m.get("steps_per_s", (packed or {}).get("steps_per_s"))
    extra = f" shared by {packed['jobs_per_gpu']}" if packed else ""
    bucketing = "bucketed" if (case.get("bucketing") or {}).get("on") else "unbucketed"
    print(f"{variant:16s} {r['status']:6s} acc {fmt(m.get('accuracy'), '.4f')} val {fmt(m.get('val_accuracy'), '.4f')} "
          f"steps {m.get('steps', '-')} steps/s {fmt(speed, '.2f')}{extra} {bucketing} "
          f"compile {(case.get('compile') or {}).get('status', '-')} "
          f"peak_mem_mb {m.get('peak_mem_mb', '-')} wall {wall}s rc {rc} {msg}")
else:
    why = {124: "timeout (no record; checkpoint only)", 137: "killed (no record)", 143: "terminated (no record)"}
    print(f"{variant:16s} {'none':6s} {why.get(rc, f'crashed with rc {rc}, no record')} wall {wall}s")
PY
}

declare -A T0=()          # running variant -> start time
longest=$EST_S            # the estimate of one run's wall time: the longest so far

finish() {   # V: a run has ended -> record, summary line, pack
    local V=$1 rc t1 wall job rec line
    rc=$(cat "$STAGE/rc/$V")
    t1=$(date +%s)
    wall=$((t1 - T0[$V]))
    [ "$wall" -gt "$longest" ] && longest=$wall
    unset "T0[$V]"
    job="$STAGE/jobs/$TASK-$V"
    rec="$STAGE/pack/records/train-$TASK-$V$SUFFIX.json"
    [ -f "$job/record.json" ] && cp -f "$job/record.json" "$rec"
    line=$(summarize "$V" "$rc" "$wall" "$rec")
    echo "$line" >>"$SUMMARY"
    echo "[accuracy] $line"
    tail -n 3 "$STAGE/pack/logs/$TASK-$V$SUFFIX.log" | sed 's/^/    | /'
    pack
}

reap() {   # wait until a running job ends, then finish every ended one
    wait -n 2>/dev/null || true
    local V
    for V in "${!T0[@]}"; do
        [ -f "$STAGE/rc/$V" ] && finish "$V"
    done
}

echo "[accuracy] task $TASK, budget ${BUDGET_S}s, $JOBS at a time, variants: ${VARIANTS[*]}, overrides: ${OVERRIDES[*]:-none}"
for V in "${VARIANTS[@]}"; do
    while [ ${#T0[@]} -ge "$JOBS" ]; do reap; done
    now=$(date +%s)
    left=$((DEADLINE - now - PACK_S))
    need=$((longest + longest / 10))
    if [ "$left" -le 10 ] || [ "$left" -lt "$need" ]; then
        line=$(printf '%-16s %-6s not started: %ss left, a run takes about %ss' "$V" skipped "$left" "$longest")
        echo "$line" >>"$SUMMARY"
        echo "[accuracy] $line"
        continue
    fi
    job="$STAGE/jobs/$TASK-$V"
    log="$STAGE/pack/logs/$TASK-$V$SUFFIX.log"
    rm -f "$STAGE/rc/$V"
    echo "[accuracy] $TASK/$V: starting with ${left}s left"
    T0[$V]=$(date +%s)
    (
        timeout -k 30 "$left" python3 -m lra.cli.train "task=$TASK" "attention=$V" trainer.progress=false \
            "hydra.run.dir=$job" ${PACKED[@]+"${PACKED[@]}"} ${OVERRIDES[@]+"${OVERRIDES[@]}"} >"$log" 2>&1
        echo $? >"$STAGE/rc/$V"
    ) &
done
while [ ${#T0[@]} -gt 0 ]; do reap; done
pack
echo "[accuracy] done in $(( $(date +%s) - START ))s; $OUT/$NAME.tgz:"
cat "$SUMMARY"
