"""The lab on arm64 under QEMU user emulation: docker/arm64-check.sh, and what its commands print.

The script makes (or reuses) a Debian arm64 root with the aarch64 locks
installed, trains the x86-64 reference run here, then runs doctor, the fit
trainer and reproduce in the root, and compares the x86-64 run with the
arm64 one. The tape and torch trainers are not trained under QEMU (290 s
more): their aarch64 wheels are proven by `invoke lock --proof`, and their
Python is the same as on x86-64. Minutes even with the root cached (CI's arm64 tier), hence its own
marker:

    pytest -m arm64 tests/test_arm64.py     # root, qemu-user-static, debootstrap
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
WORK = Path(os.environ.get("LAB_ARM64_WORK", "/var/tmp/classifier-arm64"))

pytestmark = pytest.mark.arm64


def _missing() -> list[str]:
    missing = [tool for tool in ("qemu-aarch64-static", "debootstrap", "unshare") if not shutil.which(tool)]
    if os.geteuid() != 0:
        missing.append("root")
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        missing.append("dataset-fashion-mnist")
    return missing


@pytest.fixture(scope="module")
def check() -> str:
    """The output of one docker/arm64-check.sh run (the root and its environment are reused from WORK)."""
    if _missing():
        reason = f"needs {', '.join(_missing())} (apt-get install qemu-user-static debootstrap dataset-fashion-mnist)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI {reason}: docker/ci-setup.sh installs them")
        pytest.skip(reason)
    result = subprocess.run(["bash", str(ROOT / "docker" / "arm64-check.sh"), str(WORK)], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable}, timeout=3600)
    output = result.stdout + result.stderr
    (ROOT / "test-output").mkdir(exist_ok=True)
    (ROOT / "test-output" / "arm64-check.log").write_text(output)
    assert result.returncode == 0, output[-4000:]
    assert re.search(r"^arm64-check: passed in \d+ s$", output, re.M), output[-2000:]
    return output


def _section(output: str, step: str) -> str:
    """What one step of the script printed."""
    return output.split(f"arm64-check: == {step}\n", 1)[1].split("arm64-check: ", 1)[0]


def test_doctor_on_arm64_names_the_platform_its_locks_and_torchs_release(check):
    doctor = _section(check, "arm64: invoke doctor")
    assert re.search(r"^OK +platform +Linux aarch64 \(linux-aarch64\): expects requirements/cpu-linux-aarch64.lock, "
                     r"requirements/lab-linux-aarch64.lock, requirements/torch-linux-aarch64.lock$", doctor, re.M)
    assert re.search(r"^OK +tensorflow +2\.21\.0 \(as locked\)$", doctor, re.M)
    assert re.search(r"^OK +torch +2\.9\.1 \(as locked; x86-64 Linux has 2\.13\.0\+cpu", doctor, re.M)
    assert re.search(r"^INFO +torch build +CPU-only build$", doctor, re.M)
    assert re.search(r"^OK +data fashion_mnist_check +4 file\(s\) verified", doctor, re.M)
    assert "no problems found" in doctor


def test_the_fit_trainer_trains_and_evaluates_on_arm64(check):
    train = _section(check, "arm64: invoke train --trainer fit")
    assert "train (480, 28, 28, 1), validation (120, 28, 28, 1), test (200, 28, 28, 1)" in train
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", train).group(1))
    assert 0.3 < accuracy <= 1.0  # 480 images, one epoch: well above chance (0.1)


def test_reproduce_on_arm64_gives_the_same_bits(check):
    reproduce = _section(check, "arm64: invoke reproduce (the fit run, same bits)")
    assert re.search(r"^weights_sha256 +(\w+) +\1 +yes$", reproduce, re.M), reproduce[-1500:]
    assert "\nIDENTICAL: /check/runs/fit/" in reproduce


def test_the_x86_64_portable_run_and_the_arm64_one_agree_within_the_tolerance(check):
    compare = _section(check, "invoke compare (the x86-64 run, the arm64 fit run)")
    assert re.search(r"^settings +the same$", compare, re.M) and re.search(r"^data +the same$", compare, re.M)
    assert re.search(r"^machine +other machine: bit-identical weights are not promised$", compare, re.M)
    largest = float(re.search(r"^WITHIN TOLERANCE: largest metric difference (\S+) <= 0.02 ", compare, re.M).group(1))
    assert 0 <= largest <= 0.02
    # The two runs' records: one trained natively on x86-64, the other as aarch64 under QEMU, both portable.
    machines = [json.loads(manifest.read_text())["numerics"] for manifest in
                (*(WORK / "check" / "x86_64").glob("*/manifest.json"), *(WORK / "check" / "runs" / "fit").glob("*/manifest.json"))]
    assert [(record["mode"], record["machine"]["architecture"], record["machine"]["emulated"]) for record in machines] == [
        ("portable", "x86_64", None), ("portable", "aarch64", "qemu-user")]
    assert machines[1]["applied"]["TF_ENABLE_ONEDNN_OPTS"] == "0" and machines[1]["machine"]["isa"] == "asimd"
