#!/usr/bin/env bash
# Wheels bench/gpu.sh carries to the device machine (Python 3.12, x86-64, no registry there):
# TRL + datasets for the trl variant, DeepSpeed for zero3, and what each needs that the
# device image lacks (its package list: /work/.library/device/KINDS.md). DeepSpeed publishes
# no current wheel, so its sdist is built here into a pure-Python wheel (DS_BUILD_OPS=0: its
# CUDA ops are JIT-built on the device, with the nvcc and ninja there, if a step needs one).
# .whl/ is git-ignored (.gitignore), so it travels only when `carry` names it.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
PY=${PYTHON:-.venv/bin/python}
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl \
  trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
  hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
  typing-inspection==0.4.5
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl deepspeed==0.19.8
du -sh .whl && ls .whl
