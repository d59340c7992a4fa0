#!/usr/bin/env bash
# Regenerate the locks from pyproject.toml (run after changing a dependency there, then commit both):
#   requirements/cpu.lock  every package the README's commands install on a CPU machine (Python 3.11), torch
#                          aside (scripts/setup.sh pins the CPU build itself): what pip resolves for
#                          `.[dev,llamacpp,test-s3]` today, with torch held at that build.
#   requirements/gpu.lock  the `gpu` extra for the GPU machine (Python 3.12, Linux x86_64), resolved by uv
#                          around the versions that machine ships (torch 2.11, transformers 5.17, ...).
# The pins already in the locks are kept where they still fit (pip takes the CPU lock as constraints, uv
# prefers the GPU lock's versions), so a dependency change moves only the packages it brings or drops;
# LOCK_UPGRADE=1 resolves everything afresh (also the way out when a new dependency conflicts with a pin).
# Usage: bash scripts/lock.sh   (needs PyPI; a throwaway venv holds uv)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

KEEP_CPU=(-c requirements/cpu.lock)
[ "${LOCK_UPGRADE:-0}" = 1 ] && KEEP_CPU=()
"$PY" -m pip install -q --dry-run --ignore-installed --report "$TMP/cpu.json" "${KEEP_CPU[@]}" torch==2.13.0 \
    -e ".[dev,llamacpp,test-s3]"
"$PY" - "$TMP/cpu.json" >requirements/cpu.lock <<'PY'
import json, sys
skip = {"genz-speak", "torch"}  # the project itself; torch's CPU build is pinned by scripts/setup.sh
rows = json.load(open(sys.argv[1]))["install"]
print("# CPU lock (Python 3.11), written by scripts/lock.sh from pyproject.toml: do not edit by hand.")
print("# scripts/setup.sh installs with `pip install -c requirements/cpu.lock`; torch==2.13.0 (CPU) is pinned there.")
for name, version in sorted((r["metadata"]["name"], r["metadata"]["version"]) for r in rows):
    if name.lower() not in skip:
        print(f"{name}=={version}")
PY

python3 -m venv "$TMP/uv" && "$TMP/uv/bin/pip" install -q uv
# The GPU machine's own versions (../shared/gpu/README.md); everything else is resolved around them.
printf '%s\n' torch==2.11.0 transformers==5.17.0 peft==0.21.0 accelerate==1.15.0 datasets==4.8.5 \
    bitsandbytes==0.50.2 torchao==0.18.0 >"$TMP/gpu-machine.txt"
# uv prefers the versions in an existing output file (unless told --upgrade).
[ "${LOCK_UPGRADE:-0}" = 1 ] || cp requirements/gpu.lock "$TMP/gpu.lock"
"$TMP/uv/bin/uv" pip compile pyproject.toml --extra gpu --python-version 3.12 \
    --python-platform x86_64-manylinux_2_28 -c "$TMP/gpu-machine.txt" --no-header --quiet -o "$TMP/gpu.lock"
{
    echo "# GPU lock (Python 3.12, Linux x86_64), written by scripts/lock.sh from pyproject.toml's gpu extra: do"
    echo "# not edit by hand. Install: pip install -c requirements/gpu.lock -e \".[gpu]\""
    cat "$TMP/gpu.lock"
} >requirements/gpu.lock
wc -l requirements/*.lock
