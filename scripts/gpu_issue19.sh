#!/usr/bin/env bash
# Issue 19 (row-isolated packing at the speed of dense blocks) on the lent GPU machine, in one device call:
# the isolation tests of both backends, the packing benchmark (TinyLlama shape) and 15,000 rows x 2 epochs.
#
#   bash scripts/gpu_issue19.sh prep     # here, in the project root (network to PyPI): .gpu-wheels (the
#                                        # GPU training stack), .gpu-carry/wheels (pytest, pydantic) and
#                                        # .gpu-carry/tokenizer (the student's tokenizer, 3.4 MB, saved from
#                                        # the 98 MB GGUF that one run cannot bring along)
#   bash scripts/gpu_issue19.sh all      # on the GPU machine, carrying .gpu-wheels and .gpu-carry
#   bash scripts/gpu_issue19.sh tests bench      # or split over two calls:
#   bash scripts/gpu_issue19.sh epochs           # (each call installs the wheels again)
#
# Parts: tests (isolation on both backends + the other GPU tests, ~2 min), bench (the throughput table,
# ~6 min), epochs (15,000 rows x 2 epochs with the fastest packed Unsloth case of this call's bench, or
# EPOCHS_CASE, default packing-32; ~4-5 min). Every step runs under a deadline (BUDGET seconds from the
# start, default 570) and the next one runs whatever the last one did; epochs is skipped, saying so, when
# the time left is short of what the bench projects. All three rarely fit one 10-minute call: expect
# `epochs` to need a second one.
# What comes back ($OUT, or ./gpu-out): summary.md (versions, step statuses, every table and the isolation
# figures), run.log (this script's trace), tests.log, bench.log, epochs.log, results.json.
set -uo pipefail
cd "$(dirname "$0")/.."

prep() {
    set -e
    local py=${PYTHON:-.venv/bin/python}
    [ -x "$py" ] || py=python3
    [ -d .gpu-wheels ] || ../shared/gpu/fetch-gpu-wheels.sh .gpu-wheels
    mkdir -p .gpu-carry/wheels
    # Python 3.12 wheels the tests and the config need beyond the stack (pydantic_core is compiled).
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
        -d .gpu-carry/wheels pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pydantic==2.14.4 \
        pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
    PYTHONPATH=src "$py" - <<'PY'
from transformers import AutoTokenizer

from genz_speak.models import EMBEDDED_GGUF, embedded_student_dir

AutoTokenizer.from_pretrained(embedded_student_dir(), gguf_file=EMBEDDED_GGUF).save_pretrained(".gpu-carry/tokenizer")
PY
    du -sh .gpu-wheels .gpu-carry
}

if [ "${1:-}" = prep ]; then
    prep
    exit
fi

OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
set -x
START=$(date +%s)
DEADLINE=$((START + ${BUDGET:-570}))
PARTS=("$@")
[ ${#PARTS[@]} -eq 0 ] || [ "${PARTS[0]}" = all ] && PARTS=(tests bench epochs)
SUMMARY=$OUT/summary.md
STATUS=()

left() { echo $((DEADLINE - $(date +%s))); }

# step NAME LOG CAP CMD...: run CMD for at most CAP seconds and the time left, appending its output to
# LOG; record its exit status (124: timed out).
step() {
    local name=$1 log=$2 cap=$3
    shift 3
    local t0 secs rc
    t0=$(date +%s)
    secs=$(left)
    [ "$secs" -le "$cap" ] || secs=$cap
    if [ "$secs" -lt 20 ]; then
        STATUS+=("| $name | skipped: ${secs} s left |")
        return 0
    fi
    echo "=== $name ($secs s left)" >>"$OUT/$log"
    timeout --kill-after=15 "$secs" "$@" >>"$OUT/$log" 2>&1
    rc=$?
    STATUS+=("| $name | rc $rc, $(($(date +%s) - t0)) s |")
    return 0
}

python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu-wheels/*.whl .gpu-carry/wheels/*.whl
export PYTHONPATH=$PWD/src:/tmp/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export GENZ_STUDENT_TOKENIZER=$PWD/.gpu-carry/tokenizer
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/versions.txt" 2>&1
python3 - >>"$OUT/versions.txt" 2>&1 <<'PY'
import importlib.metadata as md
import sys
print("python", sys.version.split()[0])
for name in ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "unsloth", "unsloth_zoo", "datasets"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "missing")
PY

BENCH=(python3 benchmarks/train_throughput.py --models tinyllama --tokenizer .gpu-carry/tokenizer
    --workdir /tmp/genz-bench --steps 8 --warmup 3)
for part in "${PARTS[@]}"; do
    case $part in
    tests)
        # transformers first and alone: Unsloth, once imported, patches transformers for the process.
        step "gpu tests: transformers + peft + bnb" tests.log 150 \
            python3 -m pytest tests/gpu/test_packed_isolation.py -k transformers -rA -p no:cacheprovider
        step "gpu tests: unsloth (isolation, padding-free = padded)" tests.log 240 \
            python3 -m pytest tests/gpu -k "not transformers" -rA -p no:cacheprovider
        ;;
    bench)
        # transformers first (its cases are cheap); Unsloth's most wanted cases first, so that a timeout
        # (its process gets the time left, less a margin for the table) still leaves the key figures.
        step "bench: transformers" bench.log 330 "${BENCH[@]}" --backends transformers \
            --cases 8x1 packing full-8x1 packing-32 --json "$OUT/bench-transformers.json" \
            --timeout "$(( $(left) < 300 ? $(left) - 30 : 270 ))"
        step "bench: unsloth" bench.log 600 "${BENCH[@]}" --backends unsloth \
            --cases packing packing-32 full-8x1 8x1 full-32x1 packing-16 --json "$OUT/bench-unsloth.json" \
            --timeout "$(( $(left) - 30 ))"
        ;;
    epochs)
        # The fastest packed Unsloth case of this call's bench, and the minutes it projects for the run.
        # (EPOCHS_CASE overrides it, e.g. in a call of its own, where this call's bench did not run.)
        read -r CASE NEED < <(python3 - "$OUT/bench-unsloth.json" "${EPOCHS_CASE:-}" <<'PY'
import json, sys
try:
    rows = [r for r in json.load(open(sys.argv[1])) if "error" not in r and r["case"].startswith("packing")]
except (OSError, ValueError):
    rows = []
if sys.argv[2]:
    rows = [r for r in rows if r["case"] == sys.argv[2]] or [{"case": sys.argv[2]}]
best = max(rows, key=lambda r: r.get("real_tokens_per_s", 0), default={"case": "packing-32"})
# model load, packing and Unsloth's first-step compilation on top of the projected training time
projected = best.get("projected_15k_x2_min", 3.5)
print(best["case"], int(projected * 60 * 1.15) + 90)
PY
        )
        if [ "$(left)" -lt "$NEED" ]; then
            STATUS+=("| epochs: 15,000 rows x 2 ($CASE) | skipped: $(left) s left, needs ~$NEED s: run \`EPOCHS_CASE=$CASE bash scripts/gpu_issue19.sh epochs\` in a call of its own |")
        else
            step "epochs: 15,000 rows x 2 ($CASE)" epochs.log 600 "${BENCH[@]}" --backends unsloth --cases "$CASE" \
                --train-rows 15000 --epochs 2 --json "$OUT/epochs.json" --timeout "$(( $(left) - 20 ))"
        fi
        ;;
    *) echo "unknown part: $part (tests, bench, epochs, all)" ;;
    esac
done

set +x
{
    echo "# Issue 19 on the GPU machine ($(date -u +%F))"
    echo
    sed 's/^/    /' "$OUT/versions.txt"
    echo
    echo "| step | result |"
    echo "|---|---|"
    printf '%s\n' "${STATUS[@]}"
    echo
    echo "## Isolation (tests/gpu/test_packed_isolation.py)"
    grep -h -E "^ISOLATION |^(PASSED|FAILED|SKIPPED|ERROR) |^=+ .*(passed|failed|skipped|error)" "$OUT/tests.log"
    for f in bench epochs; do
        [ -f "$OUT/$f.log" ] || continue
        echo
        echo "## $f"
        grep -h -E "^\| |^GPU: |^=== " "$OUT/$f.log"
    done
    echo
    echo "Took $(($(date +%s) - START)) s."
} >"$SUMMARY"
python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
merged = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.name != "results.json"}
(out / "results.json").write_text(json.dumps(merged, indent=1))
for name in merged:
    (out / f"{name}.json").unlink()
PY
rm -f "$OUT/versions.txt"
cat "$SUMMARY"
