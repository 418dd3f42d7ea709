"""What the process executes (classifier/machinery/cpuid.py), and the training step that no CPU's tables change.

The emulated halves run this Python under `qemu-x86_64-static` (qemu-user-static,
installed by docker/ci-setup.sh): they skip without it, except in CI.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from classifier.machinery import cpuid, numerics

ROOT = Path(__file__).parent.parent
QEMU = "qemu-x86_64-static"

x86_64_only = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 instructions")


def _emulated(code: list[str], cpu: str, timeout: int) -> subprocess.CompletedProcess:
    """Run this interpreter with `code` (its arguments) as QEMU's `cpu`; skip without QEMU, except in CI."""
    if not shutil.which(QEMU):
        reason = f"needs {QEMU} (apt-get install qemu-user-static)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI {reason}: docker/ci-setup.sh installs it", pytrace=False)
        pytest.skip(reason)
    # sys.executable, not its resolved target: a venv's python finds its packages by its own path.
    return subprocess.run([QEMU, "-cpu", cpu, sys.executable, *code], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=timeout)


@x86_64_only
def test_this_cpu_executes_what_proc_cpuinfo_says_and_estimates():
    facts = cpuid.executed()
    info = numerics.cpuinfo_fields()
    assert facts["vendor"] == info["vendor_id"] and facts["brand"] == info["model name"]
    assert facts["isa"] in ("avx512f", "avx2", "avx", "sse4_1")
    # Hardware gives a 12-bit estimate of 1/3 (0x3eaaaaab rounded correctly); AMD's is 3eaaa800.
    assert facts["rcpps_of_3"] != "3eaaaaab" and not facts["estimates_exact"]
    assert len(facts["estimates"]) == 8 and numerics.machine_kind()["estimates"] == facts["estimates"]


@x86_64_only
@pytest.mark.parametrize("cpu, vendor", [("Haswell-v4", "GenuineIntel"), ("EPYC-Rome", "AuthenticAMD")])
def test_an_emulated_cpu_is_recorded_as_the_cpu_it_computes_as(cpu, vendor):
    script = "import json; from classifier.machinery import numerics; print(json.dumps(numerics.machine_kind()))"
    result = _emulated(["-c", script], cpu, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    kind = json.loads(result.stdout)
    assert kind["vendor"] == vendor and kind["isa"] == "avx2" and kind["emulated"] == "qemu-user"
    assert kind["cpuid"]["rcpps_of_3"] == "3eaaaaab" and kind["cpuid"]["estimates_exact"]
    assert f"under QEMU user emulation on {numerics.cpuinfo_fields().get('model name')}" in kind["cpu_model"]
    assert kind["estimates"] != numerics.machine_kind()["estimates"]


def _step_hashes(output: str) -> dict[str, str]:
    """The probe's lines 'HASH  the training step with OPTIMIZER (forward to update)', optimizer -> hash."""
    return {line.split(" with ")[1].split(" (")[0]: line.split()[0]
            for line in output.splitlines() if "  the training step with " in line}


@pytest.mark.slow
@x86_64_only
def test_one_portable_training_step_is_the_same_natively_and_emulated():
    """The step under --numerics portable: the same bits with AMD's or Intel's tables as with QEMU's exact ones.

    Keras' own RMSprop is the control: Grappler turns its division by a
    square root into rsqrt, which this CPU estimates and QEMU computes
    exactly, so its step differs; the lab's PortableRMSprop must not.
    """
    probe = ["benchmarks/vendor_probe.py"]
    native = subprocess.run([sys.executable, *probe], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert native.returncode == 0, native.stderr[-2000:]
    emulated = _emulated(probe, "Haswell-v4", timeout=3000)
    assert emulated.returncode == 0, emulated.stderr[-2000:]
    here, there = _step_hashes(native.stdout), _step_hashes(emulated.stdout)
    assert set(here) == {"keras.optimizers.RMSprop", "PortableRMSprop"}
    assert here["PortableRMSprop"] == there["PortableRMSprop"]
    assert here["keras.optimizers.RMSprop"] != there["keras.optimizers.RMSprop"]
