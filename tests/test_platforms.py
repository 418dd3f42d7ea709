"""Every machine a student has: its locks, setup.sh's choice by `uname -sm`, doctor's line, the GPU build."""

import dataclasses
import os
import re
import subprocess
from pathlib import Path

import pytest

from classifier.commands import container
from classifier.machinery.checks import FAIL, OK, check_versions
from classifier.machinery.locks import locked_versions
from classifier.machinery import platforms
from conftest import run_invoke

ROOT = Path(__file__).parent.parent
X86_64, AARCH64, MACOS, WINDOWS = platforms.PLATFORMS


def _pins(lock: str) -> dict[str, str]:
    return locked_versions(ROOT / lock)


@pytest.mark.parametrize("arm", [AARCH64, MACOS], ids=lambda p: p.name)
def test_arm64_locks_pin_the_versions_x86_64_pins(arm):
    cpu, x86_cpu = _pins(arm.cpu_lock), _pins(X86_64.cpu_lock)
    # TensorFlow's CPU build is another package there, at the same version.
    assert cpu.pop("tensorflow") == x86_cpu.pop("tensorflow-cpu") == "2.21.0"
    assert cpu == x86_cpu
    lab = _pins(arm.lab_lock)
    lab.pop("appnope", None)  # ipykernel's, on macOS only
    assert lab == {name: version for name, version in _pins(X86_64.lab_lock).items() if name != "tensorflow-cpu"}
    torch = _pins(arm.torch_lock)
    assert torch["torch"] == arm.torch and _pins(X86_64.torch_lock)["torch"] == X86_64.torch == "2.13.0+cpu"
    assert {name: torch[name] for name in ("numpy", "keras")} == {name: x86_cpu[name] for name in ("numpy", "keras")}


def test_aarch64_linux_torch_is_pypis_cpu_build_with_its_torchvision():
    torch = _pins(AARCH64.torch_lock)
    # 2.9.1: PyPI's aarch64 torch 2.13 is a CUDA 13 build (nvidia-* and cuda-* packages).
    assert (torch["torch"], torch["torchvision"], MACOS.torch) == ("2.9.1", "0.24.1", "2.13.0")
    assert not [name for name in torch if name.startswith(("nvidia-", "cuda-", "triton"))]


def test_the_course_lock_is_one_pure_python_wheel_for_every_platform():
    assert list(locked_versions(ROOT / platforms.COURSE_LOCK)) == ["tf-keras"]
    # setup.sh installs it with --no-deps everywhere; the proof fetches its one wheel for each platform.
    for platform in platforms.PLATFORMS:
        command = platforms.proof_command(platform, platforms.COURSE_LOCK, Path("/tmp"))
        assert "--no-deps" in command and str(ROOT / platforms.COURSE_LOCK) in command


def test_every_platform_has_its_three_locks():
    for platform in platforms.PLATFORMS:
        for lock in platform.locks:
            assert f"--python-platform {platform.uv_platform}" in (ROOT / lock).read_text().splitlines()[1], lock


@pytest.mark.parametrize("uname, expected", [
    ("Linux x86_64", X86_64), ("Linux aarch64", AARCH64), ("Linux arm64", AARCH64),
    ("Darwin arm64", MACOS), ("Windows AMD64", WINDOWS), ("Linux riscv64", None), ("Darwin x86_64", None),
])
def test_platform_by_uname(uname, expected):
    assert platforms.by_uname(uname) == expected


def test_pip_is_given_every_manylinux_tag_down_to_2014():
    assert platforms.pip_platforms(AARCH64)[:2] == ["manylinux_2_28_aarch64", "manylinux_2_27_aarch64"]
    assert platforms.pip_platforms(AARCH64)[-2:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    assert platforms.pip_platforms(MACOS) == ["macosx_14_0_arm64"]
    # pip would judge torch's CUDA dependencies by this x86-64 Linux machine: another platform is checked
    # wheel by wheel (uv resolved its dependencies), this machine's own with pip's resolution too.
    for platform in platforms.PLATFORMS:
        command = platforms.proof_command(platform, platform.torch_lock, Path("/tmp"))
        assert ("--no-deps" in command) == (platform != platforms.current())


def test_the_marker_proof_asks_for_each_platform_and_finds_x86_64_torch_where_pip_does(monkeypatch):
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    command = platforms.marker_command("uv", X86_64, X86_64.torch_lock, Path("/tmp/target"))
    assert command[command.index("--python-platform") + 1] == "x86_64-manylinux_2_28"
    # 2.13.0+cpu is not on PyPI: the wheel folder pip uses, then PyTorch's CPU index.
    assert command[command.index("--find-links") + 1] == "/opt/wheels"
    assert command[command.index("--extra-index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    for platform in (AARCH64, MACOS, WINDOWS):
        command = platforms.marker_command("uv", platform, platform.torch_lock, Path("/tmp/target"))
        assert "--extra-index-url" not in command and "--dry-run" in command and "--require-hashes" in command


def _lock_of(package: str, lock: str, tmp_path: Path, tamper: bool = False) -> str:
    """A lock file with one package's pin and hashes from `lock`; `tamper` puts a wrong hash in their place."""
    lines = (ROOT / lock).read_text().splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith(f"{package}=="))
    block = [lines[start]] + [line for line in lines[start + 1:start + 8] if line.strip().startswith("--hash")]
    text = "\n".join(block).rstrip(" \\") + "\n"
    path = tmp_path / ("tampered.lock" if tamper else "good.lock")
    path.write_text(re.sub(r"sha256:[0-9a-f]{64}", "sha256:" + "0" * 64, text) if tamper else text)
    return str(path)


def test_the_proof_downloads_a_locked_wheel_and_rejects_a_wrong_hash(tmp_path, capsys):
    good = _lock_of("six", AARCH64.cpu_lock, tmp_path)
    tampered = _lock_of("six", AARCH64.cpu_lock, tmp_path, tamper=True)
    checked = dataclasses.replace(AARCH64, cpu_lock=good, lab_lock=tampered, torch_lock=good)
    failures = platforms.prove((checked,), destination=tmp_path)
    assert [failure.split(":")[0] for failure in failures] == [tampered]
    assert "DO NOT MATCH THE HASHES" in failures[0]
    lines = capsys.readouterr().out.splitlines()
    # cpu, lab, torch, then the course lock, which every platform shares.
    assert [line.split()[1:3] for line in lines] == [[good, "ok"], [tampered, "FAILED:"], [good, "ok"],
                                                    [platforms.COURSE_LOCK, "ok"]]


def _setup_sh(uname: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """`./setup.sh --dry-run` as on a machine whose `uname -sm` prints `uname` (install.py prints its choice)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, script in {"uname": f"echo '{uname}'", "dot": "exit 0"}.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{script}\n", encoding="utf-8")
        (bin_dir / name).chmod(0o755)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("LAB_")}
    environment.update(PATH=f"{bin_dir}:{os.environ['PATH']}", **env)
    return subprocess.run(["bash", str(ROOT / "setup.sh"), "--dry-run"], env=environment, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("uname", ["Linux x86_64", "Linux aarch64", "Darwin arm64"])
def test_setup_picks_the_locks_by_uname_and_says_which(uname, tmp_path):
    result = _setup_sh(uname, tmp_path)
    assert result.returncode == 0, result.stderr
    locks = platforms.by_uname(uname).locks
    assert result.stdout.splitlines()[0] == f"setup: {uname}: {', '.join(locks)}"
    installs = [line.split(" -r ")[1].split()[0] for line in result.stdout.splitlines() if " -r " in line]
    assert installs == [locks[0], locks[1], platforms.COURSE_LOCK, locks[2]]


def test_setup_on_an_unsupported_machine_says_so_in_one_line(tmp_path):
    result = _setup_sh("Linux riscv64", tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        "error: no lock files for Linux riscv64; supported: Linux x86_64, Linux aarch64, Darwin arm64, "
        "Windows AMD64 (or use the lab container)"]


def test_setup_refuses_the_gpu_variant_on_arm64(tmp_path):
    result = _setup_sh("Darwin arm64", tmp_path, LAB_VARIANT="gpu")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "LAB_VARIANT=gpu is for x86-64 Linux" in result.stderr and "LAB_VARIANT=cpu" in result.stderr


def test_doctor_names_the_architecture_and_the_locks_it_expects():
    checks = {check.name: check for check in check_versions(uname="Linux aarch64")}
    assert (checks["platform"].status, checks["platform"].detail) == (
        OK, "Linux aarch64 (linux-aarch64): expects requirements/cpu-linux-aarch64.lock, "
            "requirements/lab-linux-aarch64.lock, requirements/torch-linux-aarch64.lock")
    # There TensorFlow's CPU build is `tensorflow`. An x86-64 CPU environment has tensorflow-cpu instead (a
    # FAIL); the GPU image has `tensorflow`, its CUDA build, at the version the aarch64 lock pins (OK).
    if tensorflow_distribution() == "tensorflow-cpu":
        assert checks["tensorflow"].status == FAIL and "lock: 2.21.0" in checks["tensorflow"].detail
        assert "requirements/cpu-linux-aarch64.lock" in checks["tensorflow"].fix
    else:
        assert (checks["tensorflow"].status, checks["tensorflow"].detail) == (OK, "2.21.0 (as locked)")


def tensorflow_distribution() -> str:
    """Which TensorFlow distribution this environment has: tensorflow-cpu (x86-64's CPU lock) or tensorflow."""
    from importlib import metadata

    try:
        metadata.version("tensorflow-cpu")
    except metadata.PackageNotFoundError:
        return "tensorflow"
    return "tensorflow-cpu"


def test_doctor_on_a_machine_without_locks_fails_with_the_supported_ones():
    platform = check_versions(uname="Linux riscv64")[-1]
    assert (platform.name, platform.status) == ("platform", FAIL)
    assert platform.detail == "Linux riscv64: the lab has no lock files for it"
    assert "Linux aarch64" in platform.fix and "container" in platform.fix


def test_gpu_image_on_arm64_says_it_is_amd64_only(monkeypatch):
    monkeypatch.setattr(container.platform, "machine", lambda: "aarch64")
    with pytest.raises(container.ContainerError) as raised:
        container.build("gpu")
    assert str(raised.value) == ("the GPU image is linux/amd64 only and this machine is aarch64: "
                                 "build the CPU image with --variant cpu (docs/arm64.md: Jetson)")


def test_the_proof_without_a_reachable_index_names_the_index_not_the_locks():
    # A closed port: pip would fail every lock with "No matching distribution found", blaming locks that are fine.
    result = run_invoke("lock", "--proof", env={"PIP_INDEX_URL": "http://127.0.0.1:9/simple"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""  # no lock was tried
    [line] = result.stderr.splitlines()
    assert line.startswith("error: cannot reach the package index http://127.0.0.1:9/simple (")
    assert "Connection refused" in line or "10061" in line  # Linux and macOS, Windows
    assert line.endswith("): the locks were not checked; run `invoke lock --proof` online, or set PIP_INDEX_URL to a "
                         "mirror you can reach")
