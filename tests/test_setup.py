"""setup.sh and install.py: the commands they run, in CI's order; one line for a bad input or a failed step;
setup.sh waits for another apt (a fresh Ubuntu's unattended upgrades) instead of failing at once."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT

LISTS_LOCK = "/var/lib/apt/lists/lock"



def _install_module():
    """install.py, the installer both front doors run (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("install", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dry_run(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("LAB_")}
    return subprocess.run([sys.executable, str(ROOT / "install.py"), "--dry-run", *args], capture_output=True,
                          text=True, timeout=60, env={**environment, **env})


def test_the_installer_runs_what_setup_sh_ran_for_ci_in_that_order():
    result = _dry_run("--uname", "Linux x86_64")
    assert result.returncode == 0, result.stderr
    pip = ".venv/bin/python -m pip install --quiet"
    kernel = ".venv/bin/python -m ipykernel install --sys-prefix --name"
    strip = ".venv/bin/python -m nbstripout --keep-id --extra-keys metadata.language_info"
    assert result.stdout.splitlines() == [
        "setup: Linux x86_64: requirements/cpu.lock, requirements/lab.lock, requirements/torch-cpu.lock",
        f"would run: {sys.executable} -m venv .venv",
        f"would run: {pip} --require-hashes -r requirements/cpu.lock",
        f"would run: {pip} --require-hashes -r requirements/lab.lock",
        f"would run: {pip} --no-deps --require-hashes -r requirements/course.lock",
        # The wheel folder first (PIP_FIND_LINKS, pip reads it), then PyTorch's CPU index.
        f"would run: {pip} --require-hashes -r requirements/torch-cpu.lock  (if that fails: {pip} --require-hashes "
        "--extra-index-url https://download.pytorch.org/whl/cpu -r requirements/torch-cpu.lock)",
        f"would run: {kernel} python3 --display-name 'Python (TensorFlow)'",
        "where torch imports:",
        f"would run: {kernel} pytorch --display-name 'Python (PyTorch)'",
        f"would run: {pip} --no-deps --no-build-isolation -e .",
        "would copy docker/jupyter/jupyter_server_config.json to .venv/etc/jupyter/jupyter_server_config.json",
        f"would run (in a git clone): git config filter.nbstripout.clean '{strip}'",
        "would run (in a git clone): git config filter.nbstripout.smudge cat",
        f"would run (in a git clone): git config diff.ipynb.textconv '{strip} -t'",
        "dry run done: .venv/bin/invoke --list",
        "data: the first .venv/bin/invoke train downloads CIFAR-10 (170 MB) into data/ and verifies it; "
        "offline, a classroom mirror or a USB stick: docs/data.md",
    ]


def test_the_gpu_variant_leaves_pytorch_to_its_own_environment():
    result = _dry_run("--uname", "Linux x86_64", LAB_VARIANT="gpu")
    assert result.stdout.splitlines()[0] == "setup: Linux x86_64: requirements/gpu.lock, requirements/lab.lock"
    assert [line for line in result.stdout.splitlines() if "-r requirements/torch" in line] == []
    assert "note: PyTorch is not installed beside CUDA TensorFlow" in result.stderr
    assert "requirements/torch-gpu.lock" in result.stderr
    without_torch = _dry_run("--uname", "Linux x86_64", LAB_TORCH="0")
    assert without_torch.stdout.splitlines()[0] == "setup: Linux x86_64: requirements/cpu.lock, requirements/lab.lock"


@pytest.mark.parametrize("args, env, message", [
    (["--uname", "Linux x86_64"], {"LAB_VARIANT": "tpu"},
     "error: LAB_VARIANT=tpu has no lock file requirements/tpu.lock; accepted: cpu, gpu"),
    (["--verbose"], {}, "error: unrecognized arguments: --verbose; see python3 install.py --help"),
    (["--uname", "MINGW64_NT-10.0-22631 x86_64"], {},
     "error: MINGW64_NT-10.0-22631 x86_64 is Git Bash on Windows: run py -3.11 install.py in PowerShell or cmd "
     "instead"),
])
def test_a_bad_input_is_one_line_and_exit_2(args, env, message):
    result = _dry_run(*args, **env)
    assert (result.returncode, result.stdout, result.stderr.splitlines()) == (2, "", [message])


def test_a_failed_step_names_its_command_and_keeps_its_status():
    install = _install_module()
    failing = [sys.executable, "-c", "raise SystemExit(7)"]
    with pytest.raises(install.SetupError) as raised:
        install._run(failing, None, dry_run=False)
    assert raised.value.status == 7 and str(raised.value).startswith(f"`{install.shown(failing)}` failed")
    # A failure with a fallback that works (the torch wheel not in the folder, PyTorch's index has it) goes on.
    install._run(failing, [sys.executable, "-c", "pass"], dry_run=False)


@pytest.mark.skipif(os.getuid() != 0 or not os.path.exists(LISTS_LOCK), reason="needs root and apt's lock files")
def test_setup_waits_while_another_apt_holds_its_lock_then_goes_on():
    """setup.sh's wait_for_apt, run while this test holds apt's lists lock as apt-get update does."""
    import fcntl  # apt's own locks, on Linux only

    fd = os.open(LISTS_LOCK, os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX)  # what a running apt-get update holds
    try:
        waiting = subprocess.Popen(["bash", "-c", "source ./setup.sh && wait_for_apt && echo went-on"],
                                   cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(4)
        assert waiting.poll() is None, "wait_for_apt returned while the lock was still held"
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 0 and out.strip() == "went-on"
    assert f"another apt is running (it holds {LISTS_LOCK}); waiting for it, up to 600 s" in err


@pytest.mark.skipif(os.getuid() != 0 or not os.path.exists(LISTS_LOCK), reason="needs root and apt's lock files")
def test_setup_gives_up_with_one_line_when_apt_stays_busy():
    import fcntl

    fd = os.open(LISTS_LOCK, os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    try:
        result = subprocess.run(["bash", "-c", "source ./setup.sh && wait_for_apt"], cwd=ROOT, capture_output=True,
                                text=True, timeout=60, env={**os.environ, "APT_WAIT_SECONDS": "3"})
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: apt is still busy after 3 s ({LISTS_LOCK} is held); wait for it to finish")
    assert "Traceback" not in result.stderr
