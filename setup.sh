#!/usr/bin/env bash
# Sets up the lab outside the container on Linux and macOS: graphviz (for the
# model picture; with apt when run as root), then install.py, the installer
# that Windows runs directly (py -3.11 install.py): a virtual environment in
# .venv installed from the hash-locked requirements (TensorFlow, then the lab's
# JupyterLab, notebook runner and TensorBoard, then PyTorch), the Jupyter
# kernels and the notebook settings.
#
#   ./setup.sh                 # CPU TensorFlow and CPU PyTorch (laptops, CI)
#   LAB_VARIANT=gpu ./setup.sh # CUDA TensorFlow; the host needs the NVIDIA driver (PyTorch: see install.py)
#   LAB_TORCH=0 ./setup.sh     # without PyTorch (the lecture's part 2 and its tests need it)
#   ./setup.sh --notebooks     # only the two settings that keep notebook outputs out of the clone
#   ./setup.sh --dry-run       # the platform, its locks and every command, nothing installed
#
# The locks are picked by `uname -sm` (the table is classifier/machinery/platforms.py):
# x86-64 Linux, aarch64 Linux (arm64 boards, Docker on Apple silicon),
# macOS on Apple silicon and Windows each have their own; the GPU variant is x86-64 Linux only.
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

# graphviz comes from apt, which only this front door knows; everything else is install.py's.
if [[ "$#" == 0 ]] && ! command -v dot >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  wait_for_apt
  # The lock timeout covers another apt that starts between the wait and these.
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq graphviz >/dev/null
fi
exec python3 install.py --uname "$(uname -sm)" "$@"
