"""The machines the lab installs on, and the hash-locked files each one uses.

    invoke lock --proof      # uv resolves each lock for its platform; pip downloads its wheels, hashes checked

One table, read by `invoke lock` (classifier/machinery/locks.py), `invoke
doctor`, the image build (docker/Dockerfile picks by TARGETARCH) and setup.sh
(by `uname -sm`); tests/test_platforms.py keeps both in step with this table.
x86-64 Linux keeps the lab's first lock files (cpu.lock, lab.lock,
torch-cpu.lock); aarch64 Linux and macOS arm64 have their own, because there
TensorFlow's CPU build is the `tensorflow` package (`tensorflow-cpu` has
x86-64 wheels only) and PyTorch comes from PyPI. Native Windows has its own
too: its markers add packages (colorama, pywinpty) and drop others (pexpect),
and its PyTorch is PyPI's, whose Windows wheel is the CPU build. install.py
reads this table on every platform (setup.sh gives it `uname -sm`; Windows runs
it directly). requirements/course.lock
(tf-keras, one pure-Python wheel installed with --no-deps) serves every
platform; the proof fetches it for each.

PyTorch is not the same release everywhere: x86-64 Linux has 2.13.0+cpu
(PyTorch's CPU index) and macOS 2.13.0 (PyPI's, CPU and Metal), but PyPI's
aarch64 Linux torch 2.13 is a CUDA 13 build of several GB, so aarch64 Linux
pins 2.9.1, whose aarch64 wheel on PyPI is the CPU build (104 MB, no CUDA
libraries), with its torchvision 0.24.1 (on x86-64 only the GPU
environment has torchvision).
"""

from __future__ import annotations

import os
import platform as _platform
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from classifier.config import PROJECT_ROOT, UserError

COURSE_LOCK = "requirements/course.lock"  # every platform's: tf-keras is one py3-none-any wheel
# tf-keras is installed without its dependencies, as setup.sh installs it (requirements/course.in says why).
COURSE_INSTALL_HINT = f"pip install --no-deps --require-hashes -r {COURSE_LOCK}"


@dataclass(frozen=True)
class Platform:
    name: str  # short name, used in messages and in the lock files' names
    uname: str  # what `uname -sm` prints there (Windows: platform.system() and platform.machine())
    uv_platform: str  # uv pip compile --python-platform
    pip_platform: str  # pip download --platform: the newest tag the lock's wheels may carry
    tensorflow: str  # the TensorFlow package of the CPU lock there
    cpu_lock: str  # TensorFlow, Keras, NumPy, ...
    lab_lock: str  # JupyterLab, TensorBoard, the export runtimes
    torch_lock: str  # PyTorch
    torch: str  # the PyTorch release torch_lock pins, for messages (doctor, the docs)

    @property
    def locks(self) -> tuple[str, str, str]:
        """The lock files in the order they are installed."""
        return (self.cpu_lock, self.lab_lock, self.torch_lock)


PLATFORMS = (
    Platform("linux-x86_64", "Linux x86_64", "x86_64-manylinux_2_28", "manylinux_2_28_x86_64", "tensorflow-cpu",
             "requirements/cpu.lock", "requirements/lab.lock", "requirements/torch-cpu.lock", "2.13.0+cpu"),
    # PyPI's aarch64 Linux torch 2.13 is a CUDA 13 build (for Grace and
    # Jetson Thor) of several GB; 2.9.1's is the CPU build (the module's docstring).
    Platform("linux-aarch64", "Linux aarch64", "aarch64-manylinux_2_28", "manylinux_2_28_aarch64", "tensorflow",
             "requirements/cpu-linux-aarch64.lock", "requirements/lab-linux-aarch64.lock",
             "requirements/torch-linux-aarch64.lock", "2.9.1"),
    # The host route on Apple silicon (Docker Desktop runs the linux-aarch64 image).
    # torch 2.13 has macOS wheels for macOS 14 and later only.
    Platform("macos-arm64", "Darwin arm64", "aarch64-apple-darwin", "macosx_14_0_arm64", "tensorflow",
             "requirements/cpu-macos-arm64.lock", "requirements/lab-macos-arm64.lock",
             "requirements/torch-macos-arm64.lock", "2.13.0"),
    # Native Windows (docs/windows.md); `uname` is Python's platform.system() and
    # platform.machine() there. PyPI's Windows torch is the CPU build, and its
    # torchvision loads beside it; TensorFlow is tensorflow-cpu as on x86-64 Linux.
    Platform("windows-x86_64", "Windows AMD64", "x86_64-pc-windows-msvc", "win_amd64", "tensorflow-cpu",
             "requirements/cpu-windows-x86_64.lock", "requirements/lab-windows-x86_64.lock",
             "requirements/torch-windows-x86_64.lock", "2.13.0"),
)
# uv targets macOS 13 unless told otherwise; torch 2.13's macOS wheels need 14.
LOCK_ENVIRONMENT = {"MACOSX_DEPLOYMENT_TARGET": "14.0"}


def by_uname(uname: str) -> Platform | None:
    """The platform whose `uname -sm` is `uname` ("Linux aarch64"); arm64 and aarch64 are one machine."""
    system, _, machine = uname.strip().partition(" ")
    machine = {"arm64": "aarch64"}.get(machine, machine) if system == "Linux" else machine
    for candidate in PLATFORMS:
        if candidate.uname == f"{system} {machine}":
            return candidate
    return None


def current() -> Platform | None:
    """This machine's platform, or None where the lab has no locks for it."""
    return by_uname(f"{_platform.system()} {_platform.machine()}")


def supported() -> str:
    """The supported `uname -sm` values, for messages."""
    return ", ".join(candidate.uname for candidate in PLATFORMS)


def pip_platforms(platform: Platform) -> list[str]:
    """Every tag pip must accept for `platform`: pip widens a macOS tag to older releases itself,
    but a manylinux_2_28 tag only to itself, so the older glibc tags are listed (2_17 is manylinux2014)."""
    tag = platform.pip_platform
    if not tag.startswith("manylinux_2_"):
        return [tag]
    newest, arch = int(tag.split("_")[2]), tag.split("_", 3)[3]
    return [f"manylinux_2_{minor}_{arch}" for minor in range(newest, 16, -1)] + [f"manylinux2014_{arch}"]


def proof_command(platform: Platform, lock: str, destination: Path) -> list[str]:
    """The pip command that fetches every wheel of `lock` for `platform` and checks each one's hash."""
    no_deps = ["--no-deps"] if lock == COURSE_LOCK else []  # as setup.sh installs it
    tags = [argument for tag in pip_platforms(platform) for argument in ("--platform", tag)]
    # pip judges dependency markers by the machine it runs on, not by --platform:
    # on x86-64 Linux it wants torch 2.9.1's `platform_machine == "x86_64"` CUDA
    # packages for aarch64 too, and torch 2.13's `platform_system == "Linux"`
    # ones for macOS. For another machine the proof is that each locked wheel
    # exists for it with its hash; uv resolved the dependencies for that machine.
    if platform != current() and not no_deps:
        no_deps.append("--no-deps")
    return [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", *tags, *no_deps,
            "--python-version", "3.11", "--implementation", "cp",
            "--require-hashes", "-r", str(PROJECT_ROOT / lock), "-d", str(destination)]


def index_url() -> str:
    """The package index pip downloads from: $PIP_INDEX_URL, else pip's configured index-url, else PyPI's."""
    if url := os.environ.get("PIP_INDEX_URL"):
        return url.split()[0]
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, encoding="utf-8", errors="replace")
    for line in listed.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.endswith(".index-url") and not key.endswith("extra-index-url"):
            return value.strip("'\"").split()[0]
    return "https://pypi.org/simple"


def _require_reachable(index: str) -> None:
    """A UserError naming the index when it does not answer: without it every lock would fail, through no fault of its own."""
    if not index.startswith(("http://", "https://")):
        return  # a local index (file://) is pip's to judge
    try:
        with urllib.request.urlopen(f"{index.rstrip('/')}/pip/", timeout=30):
            pass
    except urllib.error.HTTPError:
        return  # it answered: pip will say what it lacks
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise UserError(f"cannot reach the package index {index} ({reason}): the locks were not checked; run "
                        "`invoke lock --proof` online, or set PIP_INDEX_URL to a mirror you can reach") from None


def prove(platforms: tuple[Platform, ...] = PLATFORMS, destination: Path | None = None) -> list[str]:
    """Download every lock's wheels for its platform with --require-hashes; return the failures.

    A lock whose wheel is missing for its platform, whose file does not match
    a hash, or that lacks a dependency (--require-hashes wants every one
    pinned) is a failure (pip's last line). About 2 GB. x86-64's torch+cpu is not
    on PyPI: pip finds it where setup.sh does (PIP_FIND_LINKS, PyTorch's index).
    """
    _require_reachable(index_url())
    failures = []
    with tempfile.TemporaryDirectory(dir=destination) as folder:
        for platform in platforms:
            for lock in (*platform.locks, COURSE_LOCK):
                command = proof_command(platform, lock, Path(folder) / platform.name)
                done = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace")
                errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR:")] or ["ERROR: ?"]
                status = "ok" if done.returncode == 0 else "FAILED: " + errors[-1].removeprefix("ERROR: ")
                print(f"{platform.name:14} {lock:42} {status}", flush=True)
                if done.returncode:
                    failures.append(f"{lock}: {status}")
    return failures


def marker_command(uv: str, platform: Platform, lock: str, target: Path) -> list[str]:
    """The uv command that resolves `lock` for `platform` without installing anything.

    pip judges a dependency's markers (`sys_platform == "win32"`) by the
    machine it runs on; uv's --python-platform judges them for `platform`, so
    a package only that platform needs (colorama on Windows: a dependency
    without a pinned hash) and a wheel it lacks both fail here, from the
    index's metadata alone. A dry run downloads no wheel, so it does not
    compare hashes: prove() does, with pip.
    """
    no_deps = ["--no-deps"] if lock == COURSE_LOCK else []  # as setup.sh installs it
    # PyTorch's +cpu builds are not on PyPI: uv looks where pip does (PIP_FIND_LINKS), then PyTorch's CPU index.
    torch_cpu = [] if "+cpu" not in (PROJECT_ROOT / lock).read_text(encoding="utf-8") else [
        *(argument for folder in os.environ.get("PIP_FIND_LINKS", "").split() for argument in ("--find-links", folder)),
        "--extra-index-url", "https://download.pytorch.org/whl/cpu", "--index-strategy", "unsafe-best-match"]
    # The index pip's half of the proof downloads from, so both halves judge the same packages.
    return [uv, "pip", "install", "--dry-run", "--quiet", "--only-binary", ":all:", "--index-url", index_url(),
            *no_deps, *torch_cpu,
            "--python-version", "3.11", "--python-platform", platform.uv_platform, "--target", str(target),
            "--require-hashes", "-r", str(PROJECT_ROOT / lock)]


def prove_markers(platforms: tuple[Platform, ...] = PLATFORMS) -> list[str]:
    """Resolve every lock of every platform but this machine's (pip resolves those) with uv for its platform.

    Returns the failures, each "lock: uv's error line"; uv missing is one failure.
    """
    _require_reachable(index_url())  # uv would blame each lock for an index it cannot reach
    uv = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if uv is None:
        return ["uv: not found; install the lab's tools: pip install --require-hashes -r requirements/lab.lock"]
    failures = []
    with tempfile.TemporaryDirectory() as target:
        for platform in platforms:
            if platform == current():
                continue
            for lock in (*platform.locks, COURSE_LOCK):
                done = subprocess.run(marker_command(uv, platform, lock, Path(target)), capture_output=True,
                                      text=True, encoding="utf-8", errors="replace", env={**os.environ, **LOCK_ENVIRONMENT})
                status = "resolves" if done.returncode == 0 else "FAILED: " + _uv_error(done.stderr)
                print(f"{platform.name:14} {lock:42} {status}", flush=True)
                if done.returncode:
                    failures.append(f"{lock}: {status}")
    return failures


def _uv_error(stderr: str) -> str:
    """uv's reason in one line: its `cause:` line where it gives one (why no solution), else its `error:` line."""
    lines = [line.strip() for line in stderr.splitlines()]
    reasons = [line for line in lines if line.startswith("cause:")] or [line for line in lines if line.startswith("error:")]
    return reasons[-1].split(":", 1)[1].strip() if reasons else (stderr.strip() or "uv failed without a message")


def installed_version(package: str) -> str | None:
    """The version of `package` installed in this environment, without importing it (None if not installed)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
