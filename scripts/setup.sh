#!/usr/bin/env bash
# Create .venv and install vitquant with its test, docs and onnx extras (pytest; MkDocs, Material for
# MkDocs, mkdocstrings; onnx, onnxruntime). Idempotent: re-installs only when pyproject.toml changed.
# Override the interpreter with PYTHON=..., the torch wheels with TORCH_SPEC=...
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
stamp=".venv/.vitquant-setup"
want="$(cat pyproject.toml) $TORCH_SPEC"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "setup: creating .venv and installing vitquant (first run takes a minute or two)" >&2
"$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q $TORCH_SPEC
.venv/bin/python -m pip install -q -e '.[test,docs,onnx]'
printf '%s' "$want" > "$stamp"
