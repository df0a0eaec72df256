#!/usr/bin/env bash
# The checks that need a GPU, in one short run (< 10 min) on a bare GPU machine: no network, no model files
# (every model is built inside). Run from the repository root with the project installed (make test's .venv, or
# any environment with a CUDA torch: TORCH=torch make test installs one):
#     bash scripts/gpu_check.sh [PYTHON]
# It runs the gpu-marked tests (bf16 engine vs HF generate; a DDP smoke run on every visible GPU; one device read
# per controlled soft step) and bench/decode.py in bf16 at batch 1/8/32 on a random ~250M-parameter Llama; the
# output goes to gpu_check.log.
set -euo pipefail
PY=${1:-${PYTHON:-.venv/bin/python}}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
{
  echo "== $(date -u) $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1)"
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__); assert torch.cuda.is_available(), 'no CUDA device'"
  echo "== gpu tests"
  timeout 300 "$PY" -m pytest -q -m gpu tests/test_gpu.py tests/test_host_reads.py -rs
  echo "== bench/decode.py, bf16, batch 1/8/32"
  timeout 240 "$PY" bench/decode.py --device cuda --dtype bfloat16 --shape 1024,16,16 --batch-sizes 1,8,32 --steps 64 --repeats 3
} 2>&1 | tee gpu_check.log
