"""Native Windows: its own locks, proven for Windows by uv's markers; install.py's choice for it; a clone
made with `core.autocrlf=true` (Git for Windows' default) keeps LF where Linux and the container run files."""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from classifier.machinery.checks import OK, check_versions
from classifier.machinery.locks import locked_versions
from classifier.machinery import platforms

ROOT = Path(__file__).parent.parent
X86_64, WINDOWS = platforms.PLATFORMS[0], platforms.by_uname("Windows AMD64")


def _pins(lock: str) -> dict[str, str]:
    return locked_versions(ROOT / lock)


def test_windows_locks_pin_x86_64_linux_versions_plus_what_only_windows_needs():
    cpu, lab, torch = (_pins(lock) for lock in WINDOWS.locks)
    # tqdm's and pytest's `sys_platform == "win32"` dependency, the one the x86-64 lock cannot give Windows.
    assert cpu.pop("colorama") == "0.4.6"
    assert cpu == _pins(X86_64.cpu_lock) and cpu["tensorflow-cpu"] == "2.21.0"
    x86_lab = _pins(X86_64.lab_lock)
    # JupyterLab's terminals: pywinpty on Windows where Linux has pexpect's ptyprocess.
    assert set(lab) - set(x86_lab) == {"colorama", "pywinpty"}
    assert set(x86_lab) - set(lab) == {"pexpect", "ptyprocess"}
    assert all(lab[name] == x86_lab[name] for name in set(lab) & set(x86_lab))
    assert lab["uv"] == x86_lab["uv"]  # the proof's resolver, the same release everywhere


def test_windows_torch_is_pypis_with_its_torchvision_and_no_cuda():
    torch = _pins(WINDOWS.torch_lock)
    assert (torch["torch"], torch["torchvision"], WINDOWS.torch) == ("2.13.0", "0.28.0", "2.13.0")
    assert not [name for name in torch if name.startswith(("nvidia-", "cuda-", "triton"))]
    # Installed after cpu and lab into one environment: it moves none of their versions.
    shared = {**_pins(WINDOWS.cpu_lock), **_pins(WINDOWS.lab_lock)}
    assert all(shared[name] == version for name, version in torch.items() if name in shared)


def test_windows_locks_are_written_by_invoke_lock_for_windows():
    from classifier.machinery import locks

    commands = {command[-1]: command for command in locks.lock_commands()}
    for lock in WINDOWS.locks:
        header = (ROOT / lock).read_text(encoding="utf-8").splitlines()[1].removeprefix("#    ")
        assert header == " ".join(commands[lock]) and "--python-platform x86_64-pc-windows-msvc" in header
    assert commands[WINDOWS.cpu_lock][5] == "cpu"  # tensorflow-cpu, as on x86-64 Linux
    assert commands[WINDOWS.torch_lock][5] == "torch-windows-x86_64"


def test_doctor_on_windows_names_the_windows_locks():
    checks = {check.name: check for check in check_versions(uname="Windows AMD64")}
    assert (checks["platform"].status, checks["platform"].detail) == (
        OK, "Windows AMD64 (windows-x86_64): expects requirements/cpu-windows-x86_64.lock, "
            "requirements/lab-windows-x86_64.lock, requirements/torch-windows-x86_64.lock")


def test_the_pip_proof_fetches_windows_wheels_without_pips_own_markers():
    command = platforms.proof_command(WINDOWS, WINDOWS.lab_lock, Path("/tmp"))
    assert command[command.index("--platform") + 1] == "win_amd64"
    assert "--no-deps" in command  # pip would judge the markers by this Linux machine


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must prove the Windows locks, but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def pypi() -> None:
    """PyPI reachable: a skip with the reason offline, a failure in CI."""
    try:
        urllib.request.urlopen("https://pypi.org/simple/colorama/", timeout=10).close()
    except OSError as error:
        _unavailable(f"PyPI cannot be reached ({error}): the Windows proof reads its metadata and wheels")


@pytest.fixture
def uv(pypi) -> str:
    """uv, which requirements/lab.lock pins (it resolves the locks for Windows); without it a skip, in CI a failure."""
    found = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if found is None:
        _unavailable("uv is not installed (pip install --require-hashes -r requirements/lab.lock)")
    return found


def _one_package_lock(package: str, lock: str, folder: Path) -> str:
    """A lock file holding `package`'s pin and hashes from `lock`."""
    lines = (ROOT / lock).read_text(encoding="utf-8").splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith(f"{package}=="))
    hashes = itertools.takewhile(lambda line: line.strip().startswith("--hash"), lines[start + 1:])
    block = [lines[start], *hashes]
    path = folder / f"{package}.lock"
    path.write_text("\n".join(block).rstrip(" \\") + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.network
def test_the_pip_proof_downloads_a_windows_only_wheel_by_its_hash(pypi, tmp_path, capsys):
    """pywinpty has Windows wheels only: pip fetches its win_amd64 wheel (about 2 MB) and checks the lock's hash."""
    winpty = _one_package_lock("pywinpty", WINDOWS.lab_lock, tmp_path)
    checked = dataclasses.replace(WINDOWS, cpu_lock=winpty, lab_lock=winpty, torch_lock=winpty)
    assert platforms.prove((checked,), destination=tmp_path) == []
    wheels = sorted(path.name for path in tmp_path.rglob("*.whl"))
    assert wheels == []  # the proof's folder is temporary: nothing is left behind
    assert [line.split()[2] for line in capsys.readouterr().out.splitlines()] == ["ok"] * 4


@pytest.mark.network
def test_uv_resolves_every_windows_lock_for_windows(uv, capsys):
    assert platforms.prove_markers((WINDOWS,)) == []
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1:] for line in lines] == [[lock, "resolves"] for lock in (*WINDOWS.locks,
                                                                                   platforms.COURSE_LOCK)]


@pytest.mark.network
def test_the_linux_lock_judged_for_windows_lacks_colorama(uv, capsys):
    """The issue's fault: x86-64 Linux's cpu.lock on Windows. pip on Linux misses it; uv's markers do not."""
    linux_locks_on_windows = dataclasses.replace(WINDOWS, cpu_lock=X86_64.cpu_lock, lab_lock=WINDOWS.lab_lock,
                                                 torch_lock=WINDOWS.torch_lock)
    failures = platforms.prove_markers((linux_locks_on_windows,))
    assert failures == [f"{X86_64.cpu_lock}: FAILED: Hash-checking is required, but no trusted hash was provided "
                        "for: `colorama`"]
    assert "FAILED" in capsys.readouterr().out.splitlines()[0]


def test_the_marker_proof_without_uv_is_one_failure_with_the_way_out(monkeypatch):
    monkeypatch.setattr(platforms.shutil, "which", lambda *args, **kwargs: None)
    assert platforms.prove_markers((WINDOWS,)) == [
        "uv: not found; install the lab's tools: pip install --require-hashes -r requirements/lab.lock"]


def _install_dry_run(**env: str) -> subprocess.CompletedProcess:
    """install.py as Windows runs it (`py -3.11 install.py`), with the platform Python reports there faked."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("LAB_")}
    return subprocess.run([sys.executable, str(ROOT / "install.py"), "--dry-run", "--uname", "Windows AMD64"],
                          capture_output=True, text=True, timeout=60, env={**environment, **env})


def test_install_py_on_windows_takes_the_windows_locks_and_scripts_paths():
    result = _install_dry_run()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == ("setup: Windows AMD64: requirements/cpu-windows-x86_64.lock, "
                        "requirements/lab-windows-x86_64.lock, requirements/torch-windows-x86_64.lock")
    pip = r".venv\Scripts\python.exe -m pip install --quiet --require-hashes"
    assert lines[2:5] == [f"would run: {pip} -r requirements/cpu-windows-x86_64.lock",
                          f"would run: {pip} -r requirements/lab-windows-x86_64.lock",
                          r"would run: .venv\Scripts\python.exe -m pip install --quiet --no-deps --require-hashes "
                          "-r requirements/course.lock"]
    assert lines[5].startswith(f"would run: {pip} -r requirements/torch-windows-x86_64.lock")
    # cmd's quoting, and git's filter with forward slashes (git runs it through its own sh).
    assert r'would run: .venv\Scripts\python.exe -m ipykernel install --sys-prefix --name python3 --display-name ' \
           '"Python (TensorFlow)"' in lines
    assert ("would run (in a git clone): git config filter.nbstripout.clean '.venv/Scripts/python.exe -m nbstripout "
            "--keep-id --extra-keys metadata.language_info'") in lines
    assert r"would copy docker/jupyter/jupyter_server_config.json to .venv\etc\jupyter\jupyter_server_config.json" \
        in lines
    assert lines[-2] == r"dry run done: .venv\Scripts\invoke --list"
    # The environment is made by the Python that runs install.py (py -3.11 there); every later step uses its own.
    assert lines[1] == f"would run: {sys.executable} -m venv .venv"
    assert not [line for line in lines[2:] if ".venv/bin" in line]


def test_install_py_on_windows_refuses_the_gpu_variant_in_one_line():
    result = _install_dry_run(LAB_VARIANT="gpu")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        "error: LAB_VARIANT=gpu is for x86-64 Linux with an NVIDIA GPU; on Windows AMD64 use LAB_VARIANT=cpu"]


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def windows_clone(tmp_path_factory) -> Path:
    """A clone of this repository's HEAD made as Git for Windows makes one: `core.autocrlf=true`."""
    if shutil.which("git") is None or _git(ROOT, "rev-parse", "HEAD").returncode:
        pytest.skip("needs git and a git checkout of the lab")
    clone = tmp_path_factory.mktemp("windows") / "lab"
    done = _git(ROOT.parent, "clone", "--quiet", "-c", "core.autocrlf=true", str(ROOT), str(clone))
    assert done.returncode == 0, done.stderr
    return clone


def test_a_windows_clone_has_no_cr_where_linux_or_the_container_runs_files(windows_clone):
    tracked = _git(windows_clone, "ls-files").stdout.splitlines()
    texts = {name: (windows_clone / name).read_bytes() for name in tracked}
    texts = {name: data for name, data in texts.items() if b"\0" not in data}  # the images are binary
    # Every kind the issue names is among the files checked.
    for kind in ("setup.sh", ".ci/run", "docker/Dockerfile", "requirements/cpu-windows-x86_64.lock", "install.py",
                 "docker/ci-setup.sh", "classifier/machinery/platforms.py"):
        assert kind in texts, kind
    assert [name for name, data in texts.items() if b"\r" in data] == []


def test_setup_sh_runs_in_a_windows_clone_and_leaves_it_clean(windows_clone):
    done = subprocess.run(["./setup.sh", "--dry-run"], cwd=windows_clone, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    machine = platforms.current()
    assert done.stdout.splitlines()[0] == f"setup: {machine.uname}: {', '.join(machine.locks)}"
    # What a run's manifest records as dirty (classifier/machinery/runs.py): git on Windows (autocrlf=true)
    # and the container's git (autocrlf unset) reading the same checkout both see no change.
    for autocrlf in ("true", "false"):
        status = _git(windows_clone, "-c", f"core.autocrlf={autocrlf}", "status", "--porcelain",
                      "--untracked-files=no")
        assert (status.returncode, status.stdout) == (0, ""), autocrlf


def test_without_the_lf_rule_a_windows_checkout_breaks_setup_sh(windows_clone, tmp_path):
    """The control: the issue's fault comes back when .gitattributes holds only the notebook filter."""
    clone = tmp_path / "lab"
    assert _git(tmp_path, "clone", "--quiet", "--no-checkout", "-c", "core.autocrlf=true", str(windows_clone),
                str(clone)).returncode == 0
    (clone / ".git" / "info").mkdir(exist_ok=True)
    # info/attributes outranks the checked-in .gitattributes: with eol unset, core.autocrlf decides again.
    (clone / ".git" / "info" / "attributes").write_text("*.sh text !eol\n", encoding="utf-8")
    assert _git(clone, "checkout", "--quiet", "HEAD", "--", "setup.sh", "install.py").returncode == 0
    assert b"\r\n" in (clone / "setup.sh").read_bytes()
    done = subprocess.run(["./setup.sh", "--dry-run"], cwd=clone, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "bash\\r" in done.stderr  # /usr/bin/env: 'bash\r': No such file or directory
