#!/usr/bin/env bash
# The GPU kit (scripts/gpu_kit/): prep here, then stash and run on the GPU machine. `--help` says how.
exec "${GPU_KIT_PYTHON:-python3}" "$(dirname "$0")/gpu_kit" "$@"
