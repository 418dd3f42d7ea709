#!/usr/bin/env bash
# Sets up the lab outside the container: graphviz (for the model picture) and
# a virtual environment in .venv installed from the hash-locked requirements
# (TensorFlow, then the lab's JupyterLab, notebook runner and TensorBoard).
#
#   ./setup.sh                 # CPU TensorFlow and CPU PyTorch (laptops, CI)
#   LAB_VARIANT=gpu ./setup.sh # CUDA TensorFlow; the host needs the NVIDIA driver (PyTorch: see below)
#   LAB_TORCH=0 ./setup.sh     # without PyTorch (the lecture's part 2 and its tests need it)
#   ./setup.sh --notebooks     # only the two settings that keep notebook outputs out of the clone (below)
#
# The locks are picked by `uname -sm` (the table is classifier/machinery/platforms.py):
# x86-64 Linux, aarch64 Linux (arm64 boards, Docker on Apple silicon) and
# macOS on Apple silicon each have their own; the GPU variant is x86-64 only.
set -euo pipefail

# wait_for_apt: return once no other apt or dpkg holds its locks, waiting up to
# $APT_WAIT_SECONDS (600). A fresh Ubuntu runs unattended upgrades for minutes
# after boot; apt-get would fail at once with "Could not get lock".
wait_for_apt() {
  python3 - "${APT_WAIT_SECONDS:-600}" /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock \
      /var/lib/apt/lists/lock /var/cache/apt/archives/lock <<'PY'
import fcntl, os, sys, time

def held(path):
    """True while another process holds apt's lock on path (apt uses fcntl locks)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)

limit, locks = float(sys.argv[1]), sys.argv[2:]
started = next_note = time.monotonic()
while busy := [path for path in locks if held(path)]:
    waited = time.monotonic() - started
    if time.monotonic() >= next_note:
        next_note += 30
        print(f"setup: another apt is running (it holds {busy[0]}); waiting for it, "
              f"up to {limit:.0f} s (waited {waited:.0f} s)", file=sys.stderr, flush=True)
    if waited > limit:
        sys.exit(f"error: apt is still busy after {limit:.0f} s ({busy[0]} is held); "
                 f"wait for it to finish (ps aux | grep -E 'apt|dpkg'), then run ./setup.sh again")
    time.sleep(2)
PY
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
  return 0  # sourced (tests/test_setup.py): only the function above
fi

cd "$(dirname "$0")"

# Notebooks are stored without outputs (classifier/machinery/notebook_outputs.py): the
# lab's Jupyter settings (as in the container) make `jupyter lab` from .venv
# save the lecture's notebooks without them, and git's nbstripout filter
# (.gitattributes; nbstripout from requirements/lab.lock) keeps any that
# another editor saved with outputs from being committed.
notebook_settings() {
  # The environment's own Jupyter config file (sys.prefix/etc/jupyter), which no package writes.
  mkdir -p .venv/etc/jupyter
  cp docker/jupyter/jupyter_server_config.json .venv/etc/jupyter/jupyter_server_config.json
  git rev-parse --is-inside-work-tree >/dev/null 2>&1 || return 0
  local strip=".venv/bin/python -m nbstripout --keep-id --extra-keys metadata.language_info"
  git config filter.nbstripout.clean "$strip"
  git config filter.nbstripout.smudge cat
  git config diff.ipynb.textconv "$strip -t"
}
if [[ "${1:-}" == --notebooks ]]; then
  notebook_settings
  exit 0
fi

variant="${LAB_VARIANT:-cpu}"
machine="$(uname -sm)"
case "$machine" in
  "Linux x86_64") suffix="" ;;
  "Linux aarch64" | "Linux arm64") suffix="-linux-aarch64" ;;
  "Darwin arm64") suffix="-macos-arm64" ;;
  *) echo "error: no lock files for ${machine}; supported: Linux x86_64, Linux aarch64, Darwin arm64 (or use the lab container)" >&2
     exit 2 ;;
esac
if [[ -n "$suffix" && "$variant" != cpu ]]; then
  echo "error: LAB_VARIANT=${variant} is for x86-64 Linux with an NVIDIA GPU; on ${machine} use LAB_VARIANT=cpu" >&2
  exit 2
fi
lock="requirements/${variant}${suffix}.lock"
if [[ ! -f "$lock" ]]; then
  echo "error: LAB_VARIANT=${variant} has no lock file ${lock}; accepted: cpu, gpu" >&2
  exit 2
fi
lab_lock="requirements/lab${suffix}.lock"
torch_lock="requirements/torch${suffix:--cpu}.lock"
echo "setup: ${machine}: ${lock}, ${lab_lock}$([[ "${LAB_TORCH:-1}" != 0 && "$variant" == cpu ]] && echo ", ${torch_lock}")"

if ! command -v dot >/dev/null 2>&1; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    wait_for_apt
    # The lock timeout covers another apt that starts between the wait and these.
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq graphviz >/dev/null
  else
    echo "warning: graphviz is missing; install it (sudo apt-get install graphviz, on macOS brew install graphviz) for the model picture" >&2
  fi
fi

python3 -m venv .venv
# --require-hashes: every wheel must be the one the lock file names, byte for byte.
.venv/bin/pip install --quiet --require-hashes -r "$lock"
# JupyterLab, the notebook runner and TensorBoard: the notebooks run and are tested on the host too.
.venv/bin/pip install --quiet --require-hashes -r "$lab_lock"
# TensorFlow's legacy Keras for the course's own scripts (`invoke course`); --no-deps because its
# wheel names the `tensorflow` distribution, which the lock above provides as tensorflow-cpu on
# x86-64. One pure-Python wheel, the same lock on every platform.
.venv/bin/pip install --quiet --no-deps --require-hashes -r requirements/course.lock
# PyTorch's CPU build for the lecture's part 2, from its own lock. It is not on
# PyPI (PyPI's Linux torch is a CUDA build of several GB): pip finds it in a
# wheel folder named by its configuration (find-links), else on PyTorch's CPU
# index. Either way the hash must match the lock. On arm64 PyTorch is PyPI's
# (on aarch64 Linux release 2.9.1, whose PyPI wheel is the CPU build).
if [[ "${LAB_TORCH:-1}" != 0 && "$variant" == cpu ]]; then
  if ! .venv/bin/pip install --quiet --require-hashes -r "$torch_lock" 2>/dev/null; then
    .venv/bin/pip install --quiet --require-hashes --extra-index-url https://download.pytorch.org/whl/cpu \
      -r "$torch_lock"
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
notebook_settings
echo "lab ready: .venv/bin/invoke --list"
