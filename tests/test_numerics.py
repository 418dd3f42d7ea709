"""The numerics modes: what `apply` sets, and the proof that "portable" gives one model on emulated machines.

The slow test trains the same short run on real Fashion-MNIST in child
processes that differ the way students' machines differ: the instruction set
oneDNN may use (ONEDNN_MAX_CPU_ISA set above the lab's cap, as a newer CPU
would allow), the cores the process may run on (taskset 1 and 2 cores), and
oneDNN's environment defaults. Under "portable" every child must give the
same weights hash; under "fastest" (the mode switched off) the same children
must not, which shows the first assertion can fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import types
from pathlib import Path

import pytest

from classifier.machinery import numerics
from classifier.config import UserError, make_config
from conftest import ROOT, run_folder_from


def test_portable_sets_the_cap_threads_and_gpu_determinism():
    environ = {}
    record = numerics.apply("portable", environ, announce=pytest.fail)
    assert environ["ONEDNN_MAX_CPU_ISA"] == "AVX2" and environ["ONEDNN_MAX_CPU_ISA"] in numerics.ONEDNN_ISAS
    assert environ["TF_NUM_INTRAOP_THREADS"] == "4" and environ["TF_NUM_INTEROP_THREADS"] == "1"
    assert environ["NVIDIA_TF32_OVERRIDE"] == "0" and environ["TF_DETERMINISTIC_OPS"] == "1"
    assert environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert record["mode"] == "portable" and record["applied"] == numerics.MODES["portable"]
    assert record["environment"]["TF_NUM_INTRAOP_THREADS"] == "4"
    assert record["overridden"] == {}
    # The record names this machine as the operating system does, not as machine_kind() would say again.
    assert record["machine"]["architecture"] == os.uname().machine
    assert record["machine"]["cpus"] == len(os.sched_getaffinity(0))


def test_portable_names_what_it_overrides_in_one_line():
    environ = {"TF_NUM_INTRAOP_THREADS": "16", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "ONEDNN_CPU_ISA_HINTS": "PREFER_YMM",
               "TF_NUM_INTEROP_THREADS": "1", "HOME": "/home/student"}
    lines = []
    record = numerics.apply("portable", environ, announce=lines.append)
    assert lines == ["numerics portable overrides ONEDNN_MAX_CPU_ISA=AVX512_CORE -> AVX2, TF_NUM_INTRAOP_THREADS=16 -> 4, "
                     "ONEDNN_CPU_ISA_HINTS=PREFER_YMM -> (unset)"]
    assert record["overridden"] == {"TF_NUM_INTRAOP_THREADS": "16", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
                                    "ONEDNN_CPU_ISA_HINTS": "PREFER_YMM"}
    assert "ONEDNN_CPU_ISA_HINTS" not in environ and environ["HOME"] == "/home/student"


def test_fastest_keeps_the_users_environment():
    environ = {"TF_NUM_INTRAOP_THREADS": "16", "ONEDNN_MAX_CPU_ISA": "avx2"}
    record = numerics.apply("fastest", environ, announce=pytest.fail)
    assert environ == {"TF_NUM_INTRAOP_THREADS": "16", "ONEDNN_MAX_CPU_ISA": "avx2"}
    assert record["applied"] == {} and record["environment"]["TF_NUM_INTRAOP_THREADS"] == "16"


@pytest.mark.parametrize("mode, environ, message", [
    ("portible", {}, "unknown numerics mode 'portible'; accepted: fastest, portable"),
    ("fastest", {"ONEDNN_MAX_CPU_ISA": "AVX3"}, "ONEDNN_MAX_CPU_ISA=AVX3 is not a level oneDNN knows"),
])
def test_bad_mode_or_isa_is_one_clear_error(mode, environ, message):
    with pytest.raises(UserError, match=message):
        numerics.apply(mode, environ)


def test_refuses_once_tensorflow_is_loaded(monkeypatch):
    # A stand-in module: the guard looks only at whether the name is loaded.
    monkeypatch.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "2")
    with pytest.raises(UserError, match="must be chosen before TensorFlow is imported"):
        numerics.apply("portable")
    assert os.environ["TF_NUM_INTRAOP_THREADS"] == "2", "a refused mode must change nothing"


def test_resolve_takes_the_flag_then_the_environment(monkeypatch):
    monkeypatch.setenv("CLASSIFIER_NUMERICS", "portable")
    assert numerics.resolve(None) == "portable" and numerics.resolve("fastest") == "fastest"
    monkeypatch.delenv("CLASSIFIER_NUMERICS")
    assert numerics.resolve(None) == numerics.DEFAULT_MODE


def test_config_takes_and_checks_the_mode():
    assert make_config(numerics="portable").numerics == "portable"
    with pytest.raises(UserError, match="unknown numerics 'fast'; accepted: fastest, portable"):
        make_config(numerics="fast")


def test_machine_kind_reads_this_cpu():
    here = numerics.machine_kind()
    assert set(here) == {"architecture", "vendor", "cpu_model", "cpus", "isa", "l1d_kib", "l2_kib", "gpus", "emulated",
                         "estimates", "cpuid"}
    assert here["architecture"] == os.uname().machine and here["cpus"] == len(os.sched_getaffinity(0))
    if here["architecture"] == "x86_64":
        # The first processor's flags, read here with a regular expression rather than by the lab's parser.
        flags = re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(encoding="utf-8"), re.M).group(1).split()
        highest = next(isa for isa in ("avx512f", "avx2", "avx", "sse4_1") if isa in flags)
        assert here["isa"] == highest and here["l1d_kib"] > 0


# Recorded /proc/cpuinfo texts (first processor, abridged) and what machine_kind() must make of each.
@pytest.mark.parametrize("cpuinfo, expected", [
    ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
     "flags\t\t: fpu sse4_1 sse4_2 avx avx2 avx512f avx512bw amx_tile\n\nprocessor\t: 1\nvendor_id\t: Other\n",
     {"vendor": "GenuineIntel", "cpu_model": "Intel(R) Xeon(R) Platinum 8480+", "isa": "avx512f", "emulated": None}),
    ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD Ryzen 7 5800X 8-Core Processor\n"
     "flags\t\t: fpu sse4_1 sse4_2 avx avx2 fma\n",
     {"vendor": "AuthenticAMD", "cpu_model": "AMD Ryzen 7 5800X 8-Core Processor", "isa": "avx2", "emulated": None}),
    ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Core(TM) i5-2500 CPU\nflags\t\t: fpu sse4_1 avx\n",
     {"vendor": "GenuineIntel", "cpu_model": "Intel(R) Core(TM) i5-2500 CPU", "isa": "avx", "emulated": None}),
])
def test_machine_kind_on_x86_64(monkeypatch, tmp_path, cpuinfo, expected):
    monkeypatch.setattr(numerics.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(numerics.cpuid, "executed", lambda: None)  # where CPUID cannot run: /proc/cpuinfo alone
    real_path = numerics.Path
    (tmp_path / "cpuinfo").write_text(cpuinfo, encoding="utf-8")
    monkeypatch.setattr(numerics, "Path", lambda path, *rest: real_path(tmp_path / "cpuinfo")
                        if str(path) == "/proc/cpuinfo" else real_path(path, *rest))
    here = numerics.machine_kind()
    assert {key: here[key] for key in expected} == expected and here["architecture"] == "x86_64"


def test_portable_on_aarch64_runs_eigens_kernels_and_clears_the_x86_cap(monkeypatch):
    monkeypatch.setattr(numerics.platform, "machine", lambda: "aarch64")
    environ, lines = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "TF_ENABLE_ONEDNN_OPTS": "1"}, []
    record = numerics.apply("portable", environ, announce=lines.append)
    assert "ONEDNN_MAX_CPU_ISA" not in environ and environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
    assert environ["TF_NUM_INTRAOP_THREADS"] == "4" and environ["TF_DETERMINISTIC_OPS"] == "1"
    assert lines == ["numerics portable overrides TF_ENABLE_ONEDNN_OPTS=1 -> 0, ONEDNN_MAX_CPU_ISA=AVX512_CORE -> (unset)"]
    assert record["applied"] == numerics.settings("portable", "aarch64") != numerics.settings("portable", "x86_64")
    assert record["machine"]["architecture"] == "aarch64"


@pytest.mark.parametrize("cpuinfo, expected", [
    # A Raspberry Pi 5 (Cortex-A76): NEON, no SVE.
    ("processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes crc32 atomics fphp asimdhp\n"
     "CPU implementer\t: 0x41\nCPU part\t: 0xd0b\n\nprocessor\t: 1\n",
     {"vendor": "0x41", "cpu_model": "implementer 0x41 part 0xd0b", "isa": "asimd", "emulated": None}),
    # QEMU user emulation passes the x86-64 host's /proc/cpuinfo through; the aux vector is the emulated CPU's.
    ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t: fpu avx2\n",
     {"vendor": None, "cpu_model": "QEMU user emulation on Intel(R) Xeon(R) Processor", "isa": "sve",
      "emulated": "qemu-user"}),
])
def test_machine_kind_on_aarch64(monkeypatch, tmp_path, cpuinfo, expected):
    monkeypatch.setattr(numerics.platform, "machine", lambda: "aarch64")
    # AT_HWCAP (16) with ASIMD and SVE, AT_HWCAP2 (26) without SVE2, then AT_NULL.
    (tmp_path / "auxv").write_bytes(struct.pack("=6Q", 16, 1 << 1 | 1 << 22, 26, 0, 0, 0))
    hwcaps = numerics._arm_hwcaps
    monkeypatch.setattr(numerics, "_arm_hwcaps", lambda: hwcaps(tmp_path / "auxv"))
    real_path = numerics.Path
    (tmp_path / "cpuinfo").write_text(cpuinfo, encoding="utf-8")
    monkeypatch.setattr(numerics, "Path", lambda path, *rest: real_path(tmp_path / "cpuinfo")
                        if str(path) == "/proc/cpuinfo" else real_path(path, *rest))
    here = numerics.machine_kind()
    assert {key: here[key] for key in expected} == expected and here["architecture"] == "aarch64"


_LAPTOP = {"architecture": "x86_64", "vendor": "GenuineIntel", "cpu_model": "Intel Core i5-8250U", "cpus": 8,
           "isa": "avx2", "l1d_kib": 32, "l2_kib": 256, "gpus": []}


@pytest.mark.parametrize("mode, other, expected", [
    # Under portable a workstation with AVX-512 and more cores runs the same capped kernels and threads.
    ("portable", {"cpu_model": "Intel Xeon Gold 6248", "cpus": 2, "isa": "avx512f"}, []),
    ("fastest", {"cpu_model": "Intel Xeon Gold 6248", "cpus": 2, "isa": "avx512f"},
     ["cpu_model: Intel Core i5-8250U -> Intel Xeon Gold 6248", "cpus: 8 -> 2", "isa: avx2 -> avx512f"]),
    # What the cap cannot fix: an older CPU, another architecture, a GPU. The L1 size was measured not to
    # matter (a 48 KiB Zen 5 gave the bits of a 32 KiB EPYC); under fastest it is still named.
    ("portable", {"l1d_kib": 48, "l2_kib": 1024}, []),
    ("fastest", {"l1d_kib": 48}, ["l1d_kib: 32 -> 48"]),
    ("portable", {"isa": "avx"}, ["isa: avx2 -> avx"]),
    ("portable", {"architecture": "aarch64", "vendor": None, "isa": None},
     ["architecture: x86_64 -> aarch64", "vendor: GenuineIntel -> None", "isa: avx2 -> None"]),
    ("portable", {"gpus": ["NVIDIA H100 80GB HBM3"]}, ["gpus: [] -> ['NVIDIA H100 80GB HBM3']"]),
    # On Arm the portable mode runs Eigen's NEON kernels whether or not the CPU has SVE.
    ("portable", {"architecture": "aarch64", "vendor": "0x41", "isa": "sve2"},
     ["architecture: x86_64 -> aarch64", "vendor: GenuineIntel -> 0x41", "isa: avx2 -> asimd"]),
])
def test_kind_differences_name_what_changes_the_numbers(mode, other, expected):
    assert numerics.kind_differences(mode, _LAPTOP, {**_LAPTOP, **other}) == expected


@pytest.mark.parametrize("mode, other, expected", [
    # Recorded both, the rcpps/rsqrtps tables count and the vendor does not: QEMU as an Intel and as an
    # AMD CPU gave the same bits, QEMU and AMD's hardware did not (benchmarks/results/vendor_probe.md).
    ("portable", {"vendor": "AuthenticAMD"}, []),
    ("portable", {"estimates": "5d2f07e1"}, ["estimates: b2868684 -> 5d2f07e1"]),
    ("fastest", {"vendor": "AuthenticAMD", "estimates": "5d2f07e1"},
     ["vendor: GenuineIntel -> AuthenticAMD", "estimates: b2868684 -> 5d2f07e1"]),
])
def test_kind_differences_judge_the_estimate_tables_where_both_runs_recorded_them(mode, other, expected):
    laptop = {**_LAPTOP, "estimates": "b2868684"}
    assert numerics.kind_differences(mode, laptop, {**laptop, **other}) == expected


def test_a_run_without_a_recorded_kind_keeps_the_same_machine_promise():
    assert numerics.kind_differences("portable", None, _LAPTOP) == []


def test_bad_numerics_flag_is_refused_before_training(invoke_cli, tmp_path):
    result = invoke_cli("train", "--numerics", "exact", "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: unknown numerics 'exact'; accepted: fastest, portable"
    assert not (tmp_path / "runs").exists()


def test_bad_numerics_in_the_environment_names_the_variable(invoke_cli, tmp_path):
    result = invoke_cli("train", "--runs-dir", str(tmp_path / "runs"), env={"CLASSIFIER_NUMERICS": "exact"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: CLASSIFIER_NUMERICS=exact is not a numerics mode; accepted: fastest, portable"


# Emulated machines: (name, CPUs for taskset, environment the user exported).
# ONEDNN_MAX_CPU_ISA above the cap stands for a newer CPU; "onednn defaults"
# for a machine (or a user) with oneDNN's environment set otherwise.
EMULATED_MACHINES = (
    ("this machine, 2 cores", "0,1", {}),
    ("1 core", "0", {}),
    ("newer CPU (ISA above the cap), 2 cores, 2 threads asked for", "0,1",
     {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX", "TF_NUM_INTRAOP_THREADS": "2"}),
    ("oneDNN defaults changed, 1 core", "0",
     {"TF_ENABLE_ONEDNN_OPTS": "0", "ONEDNN_DEFAULT_FPMATH_MODE": "BF16", "ONEDNN_CPU_ISA_HINTS": "PREFER_YMM"}),
)


def _on_machine(cpus: str, environ: dict, *args: str) -> subprocess.CompletedProcess:
    """`invoke ARGS` as a process pinned to `cpus` whose environment differs by `environ` alone."""
    # Start from this process's environment without the variables under test.
    base = {key: value for key, value in os.environ.items()
            if key not in numerics.RECORDED and key != "CLASSIFIER_NUMERICS"}
    return subprocess.run(["taskset", "-c", cpus, sys.executable, "-m", "invoke", *args], cwd=ROOT,
                          env={**base, **environ}, capture_output=True, text=True, timeout=600)


def _hashes_on_emulated_machines(lab, mode: str) -> dict[str, tuple[str, object]]:
    """(weights hash, run folder) of the same short training on each emulated machine under `mode`."""
    if not shutil.which("taskset"):
        pytest.skip("taskset (util-linux) is needed to emulate 1- and 2-core machines")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs to emulate a 2-core machine")
    hashes = {}
    for name, cpus, environ in EMULATED_MACHINES:
        result = _on_machine(cpus, environ, "train", "--dataset", "fashion_mnist", "--data-dir", str(lab / "data"),
                             "--runs-dir", str(lab / f"runs-{mode}"), "--limit", "1200", "--epochs", "1",
                             "--numerics", mode)
        assert result.returncode == 0, result.stderr[-3000:]
        run_dir = run_folder_from(result.stdout)
        hashes[name] = (json.loads((run_dir / "manifest.json").read_text())["weights_sha256"], run_dir)
        if mode == "portable" and environ:
            assert "numerics portable overrides" in result.stderr
    return hashes


@pytest.mark.slow
def test_portable_mode_gives_one_model_on_every_emulated_machine(fashion_lab):
    runs = _hashes_on_emulated_machines(fashion_lab, "portable")
    hashes = {name: weights for name, (weights, _) in runs.items()}
    assert len(set(hashes.values())) == 1, json.dumps(hashes, indent=2)
    # `invoke reproduce` applies the run's mode again: on one core, with threads asked for, the same bits.
    run_dir = runs["this machine, 2 cores"][1]
    result = _on_machine("0", {"TF_NUM_INTRAOP_THREADS": "1"}, "reproduce", str(run_dir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "numerics portable overrides TF_NUM_INTRAOP_THREADS=1 -> 4" in result.stderr
    assert "IDENTICAL" in result.stdout and "not promised" not in result.stdout
    assert "Same environment and kind of machine as recorded: the rerun should be bit-identical." in result.stdout


@pytest.mark.slow
def test_without_the_mode_the_emulated_machines_differ(fashion_lab):
    # The control: the same children under "fastest" give more than one model,
    # so the test above fails when the mode stops fixing what it fixes.
    hashes = {name: weights for name, (weights, _) in _hashes_on_emulated_machines(fashion_lab, "fastest").items()}
    assert len(set(hashes.values())) > 1, json.dumps(hashes, indent=2)
