#!/usr/bin/env bash
# bench/gpu.py on the device machine (PyTorch + transformers there; no TRL, no DeepSpeed).
#
#   here, once:      bash bench/gpu_wheels.sh          # fills .whl/ (git-ignored, ~4 MB)
#   on the device:   run(command="bash bench/gpu.sh", carry=[".whl"], timeout_s=600)
#
# Carried wheels (TRL, DeepSpeed and what they need beyond the device's packages) are
# installed into /tmp/site; without them the trl and zero3 variants are skipped with the
# reason printed. The figures come back as $OUT/gpu.log and $OUT/gpu.json.
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}" \
    || echo "carried wheels failed to install: trl/zero3 will be skipped"
fi
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TORCH_EXTENSIONS_DIR=/tmp/torch_extensions
out="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# 570 s hard stop; gpu.py itself starts no new measurement after --budget-s.
timeout 570 python3 bench/gpu.py --budget-s 420 --json "$out/gpu.json" "$@" 2>&1 \
  | tee "$out/gpu.log"
