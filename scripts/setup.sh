#!/usr/bin/env bash
# Install locopack and the tools its tests need.
#
# A bare `torch` requirement on a machine without torch pulls a multi-GB CUDA build, so this
# script installs torch first, on its own, only where none is importable: by default the CPU
# build 2.13.0 (set TORCH_SPEC to choose another, e.g. a CUDA build on a GPU machine).  A torch
# that is already installed is kept: locopack's own requirement is a range it satisfies.
#
# Usage: bash scripts/setup.sh [EXTRAS]     (EXTRAS defaults to "dev,onnx,dist,nudenet,sign", what
#        the whole test suite needs; e.g. "dev" for a lighter install whose tests skip the rest)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
EXTRAS="${1:-dev,onnx,dist,nudenet,sign}"

if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
  echo "keeping the installed torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
else
  "$PYTHON" -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
fi
"$PYTHON" -m pip install --quiet -e ".[${EXTRAS}]"
"$PYTHON" -c "import locopack, torch; print('locopack', locopack.__version__, 'with torch', torch.__version__)"
