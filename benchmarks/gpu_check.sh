#!/usr/bin/env bash
# benchmarks/gpu_check.py on a GPU machine that reaches no network (docs/gpu.md): install the wheels carried in
# .whl/ into a folder of their own, put r1zero's source on the path, run every part on CUDA, and write the
# results to $OUT (the folder a device run brings back) or else benchmarks/results/.
#
#     bash benchmarks/gpu_check.sh --download    # first, where pip reaches PyPI: the wheels of gpu_wheels.txt
#     bash benchmarks/gpu_check.sh               # then, on the GPU machine (any gpu_check.py option may follow)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--download" ]; then
  # The GPU image's Python is 3.12 on x86_64 Linux; the wheels are pure Python, the platforms only let pip match.
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl -r benchmarks/gpu_wheels.txt
  git rev-parse --short HEAD > .whl/COMMIT
  ls .whl
  exit 0
fi
if ! ls .whl/math_verify-*.whl > /dev/null 2>&1; then
  echo "gpu_check.sh: no wheels in .whl/: run 'bash benchmarks/gpu_check.sh --download' where pip reaches PyPI," \
       "and carry .whl/ beside the working tree" >&2
  exit 2
fi
site="${TMPDIR:-/tmp}/r1zero-gpu-site"
python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
export PYTHONPATH="$PWD/src:$site${PYTHONPATH:+:$PYTHONPATH}"
export R1ZERO_COMMIT="$(cat .whl/COMMIT 2>/dev/null || echo unknown)"  # --download wrote HEAD's: rerun it after a commit
export PYTHONUNBUFFERED=1
if command -v nvidia-smi > /dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; fi
exec python3 benchmarks/gpu_check.py --output "${OUT:-benchmarks/results}" "$@"
