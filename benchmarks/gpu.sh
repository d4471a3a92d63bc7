#!/usr/bin/env bash
# lmkit on one GPU in at most 8 minutes: pretraining MFU (GPT-2 124M, bf16, compiled and eager), generation
# tokens/s at batch 1 and 32, FSDP2 on one process with a resume, a serve load; see benchmarks/gpu.py and
# docs/performance.md#a-gpu-run. Run it from anywhere; it works in the repository root.
#
#   bash benchmarks/gpu.sh                  # on the GPU machine: about 6-8 minutes on one H100
#   bash benchmarks/gpu.sh --cpu            # the dry run, every part tiny and on the CPU (or GPU_SH_DRY=1)
#   bash benchmarks/gpu.sh --fetch-wheels   # here, with network: lmkit[serve]'s wheels for the GPU machine's
#                                           # Python 3.12, into benchmarks/out/wheels (carry that folder)
#
# Torch: no virtual environment is made and nothing is downloaded on the GPU machine (it may have no network).
# The script uses $PYTHON if set, else ./.venv/bin/python, else python3, the first that imports torch: on this
# workplace's GPU machines python3 holds PyTorch with CUDA, Triton and every lmkit dependency (numpy, pyarrow,
# sentencepiece, safetensors, typer, rich). Without one it stops and says what to install. lmkit itself runs
# from this checkout (PYTHONPATH), not installed. Wheels in benchmarks/out/wheels, when present and fastapi does
# not import, are installed into a temporary folder first (the serve part needs fastapi and uvicorn, which that
# image lacks).
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=benchmarks/out/wheels

if [ "${1:-}" = "--fetch-wheels" ]; then
  # The versions lmkit's tests run with; pydantic_core is the one compiled wheel. (annotated-doc and
  # opentelemetry-api: fastapi imports them.)
  mkdir -p "$WHEELS"
  exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEELS" fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic_core==2.50.5 uvicorn==0.55.0 \
    annotated-types==0.8.0 annotated-doc==0.0.7 typing-inspection==0.4.5 typing_extensions==4.16.0 sniffio==1.3.1 \
    opentelemetry-api==1.45.2
fi

PY=""
for candidate in "${PYTHON:-}" .venv/bin/python python3; do
  if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import torch" 2>/dev/null; then
    PY=$candidate
    break
  fi
done
if [ -z "$PY" ]; then
  echo "gpu.sh: no Python here imports torch (tried \$PYTHON, .venv/bin/python, python3); install PyTorch with CUDA" \
       "(pip install torch, from a machine with network) or set PYTHON to one that has it" >&2
  exit 1
fi
missing=$("$PY" - <<'EOF'
import importlib.util
print(" ".join(m for m in ("numpy", "pyarrow", "sentencepiece", "safetensors", "typer", "rich")
               if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
  echo "gpu.sh: $PY lacks lmkit's dependencies: $missing (pip install them, or carry their wheels in $WHEELS)" >&2
fi

if ls "$WHEELS"/*.whl >/dev/null 2>&1 && ! "$PY" -c "import fastapi, uvicorn" 2>/dev/null; then
  SITE=$(mktemp -d /tmp/lmkit-gpu-site.XXXXXX)
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl; then
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu.sh: the wheels in $WHEELS did not install; the serve part will be skipped" >&2
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
echo "gpu.sh: $("$PY" -c 'import sys, torch; print(sys.executable, "torch", torch.__version__)')"
exec "$PY" benchmarks/gpu.py "$@"
