#!/usr/bin/env bash
# Sets up the lab outside the container: graphviz (for the model picture) and
# a virtual environment in .venv installed from the hash-locked requirements
# (TensorFlow, then the lab's JupyterLab, notebook runner and TensorBoard).
#
#   ./setup.sh                 # CPU TensorFlow and CPU PyTorch (laptops, CI)
#   LAB_VARIANT=gpu ./setup.sh # CUDA TensorFlow; the host needs the NVIDIA driver (PyTorch: see below)
#   LAB_TORCH=0 ./setup.sh     # without PyTorch (the lecture's part 2 and its tests need it)
set -euo pipefail
cd "$(dirname "$0")"
variant="${LAB_VARIANT:-cpu}"
lock="requirements/${variant}.lock"
if [[ ! -f "$lock" ]]; then
  echo "error: LAB_VARIANT=${variant} has no lock file ${lock}; accepted: cpu, gpu" >&2
  exit 2
fi

if ! command -v dot >/dev/null 2>&1; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null
  else
    echo "warning: graphviz is missing; install it (sudo apt-get install graphviz) for the model picture" >&2
  fi
fi

python3 -m venv .venv
# --require-hashes: every wheel must be the one the lock file names, byte for byte.
.venv/bin/pip install --quiet --require-hashes -r "$lock"
# JupyterLab, the notebook runner and TensorBoard: the notebooks run and are tested on the host too.
.venv/bin/pip install --quiet --require-hashes -r requirements/lab.lock
# PyTorch's CPU build for the lecture's part 2, from its own lock. It is not on
# PyPI (PyPI's Linux torch is a CUDA build of several GB): pip finds it in a
# wheel folder named by its configuration (find-links), else on PyTorch's CPU
# index. Either way the hash must match the lock.
if [[ "${LAB_TORCH:-1}" != 0 && "$variant" == cpu ]]; then
  if ! .venv/bin/pip install --quiet --require-hashes -r requirements/torch-cpu.lock 2>/dev/null; then
    .venv/bin/pip install --quiet --require-hashes --extra-index-url https://download.pytorch.org/whl/cpu \
      -r requirements/torch-cpu.lock
  fi
elif [[ "${LAB_TORCH:-1}" != 0 ]]; then
  # PyTorch's CUDA build (CUDA 13) cannot share TensorFlow's environment: both
  # cuDNN wheels write site-packages/nvidia/cudnn/lib/libcudnn*.so.9.
  echo "note: PyTorch is not installed beside CUDA TensorFlow; for it make a second environment:" >&2
  echo "  python3 -m venv .venv-torch && .venv-torch/bin/pip install --require-hashes -r requirements/torch-gpu.lock" \
       "&& .venv-torch/bin/pip install --no-deps -e ." >&2
fi
# The Jupyter kernels the notebooks name: "python3" (01-03) and "pytorch" (04).
# Here one environment holds both frameworks, so both run .venv's Python; the
# GPU image has a separate PyTorch environment behind "pytorch" (docker/Dockerfile).
.venv/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python (TensorFlow)" >/dev/null
if .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m ipykernel install --sys-prefix --name pytorch --display-name "Python (PyTorch)" >/dev/null
fi
.venv/bin/pip install --quiet --no-deps --no-build-isolation -e .
echo "lab ready: .venv/bin/invoke --list"
