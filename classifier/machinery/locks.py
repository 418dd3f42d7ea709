"""The hash-locked requirement files: the uv commands that write them, what they pin, and the wheels a build needs.

    locks.lock_commands()                         # what `invoke lock` runs, in order
    locks.locked_versions(Path("requirements/cpu.lock"))["tensorflow-cpu"]   # -> "2.21.0"
    locks.stage_torch_wheels()                    # PyTorch's CPU wheel into docker/wheels/ for `invoke build`

A lock file is read as pip reads it: backslash-continued lines joined,
comments dropped, each requirement's name, version and marker read with the
standard library and its `--hash` options kept beside it (`read_lock`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


from classifier.config import PROJECT_ROOT
from classifier.machinery import platforms
from classifier.machinery.files import sha256_of

# Wheels the build installs that no index it reaches may have (PyTorch's CPU
# build is not on PyPI). In the build context, git-ignored; docker/Dockerfile
# installs from here, or from PyTorch's CPU index when it holds no wheel.
WHEELS_DIR = PROJECT_ROOT / "docker" / "wheels"
TORCH_CPU_LOCK = PROJECT_ROOT / "requirements" / "torch-cpu.lock"
# The arguments of every lock file; `requirements/lab.lock` is constrained by
# both TensorFlow locks so that it installs over either without a conflict.
_LOCK_PLATFORM = ["--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28"]


# A pin as uv writes it: NAME==VERSION, then an optional `; marker`. Read with the standard library:
# `invoke build` reads the torch lock on a host whose environment holds invoke alone (docs/container.md);
# tests/test_locks.py checks this reading against packaging's parser on every real lock.
_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*(?:==\s*([^\s;,]+))?")


@dataclass(frozen=True)
class Pin:
    """One requirement of a hash-locked file."""

    requirement: str  # e.g. torch==2.13.0+cpu, or with a marker: colorama==0.4.6 ; sys_platform == "win32"
    hashes: tuple[str, ...]  # its --hash values, e.g. "sha256:6746db..."

    @property
    def name(self) -> str:
        """The project's canonical name (PEP 503): lower case, runs of -_. as one -."""
        return re.sub(r"[-_.]+", "-", _PIN.match(self.requirement).group(1)).lower()

    @property
    def version(self) -> str:
        """The version the pin's `==` names, e.g. "2.13.0+cpu"; "" for a requirement without one."""
        return _PIN.match(self.requirement).group(2) or ""

    @property
    def marker(self) -> str:
        """The environment marker after `;`, e.g. 'python_version >= "3.11"'; "" for none."""
        return self.requirement.partition(";")[2].strip()

    def lines(self) -> str:
        """The pin and its hashes as requirement lines that `pip download --require-hashes -r` reads."""
        return " \\\n".join([self.requirement, *(f"    --hash={value}" for value in self.hashes)]) + "\n"


def read_lock(path: Path) -> list[Pin]:
    """Every requirement of a hash-locked file (uv pip compile --generate-hashes), in the file's order.

    Args:
        path: the lock file, e.g. requirements/cpu.lock.

    Returns:
        One Pin per requirement line.
    """
    # A backslash at the end of a line continues it, as pip reads requirement files.
    logical = path.read_text(encoding="utf-8").replace("\\\n", " ").splitlines()
    pins = []
    for line in logical:
        text = line.split(" #", 1)[0].strip()
        if not text or text.startswith(("#", "-")):  # a comment, or an option line such as --index-url
            continue
        # The requirement (its marker may hold spaces) ends where the first option starts.
        requirement, *options = (part.strip() for part in text.split(" --"))
        hashes = tuple(option.removeprefix("hash=") for option in options if option.startswith("hash="))
        pins.append(Pin(requirement, hashes))
    return pins


def locked_versions(path: Path) -> dict[str, str]:
    """{canonical project name: pinned version} of a hash-locked file, e.g. {"tensorflow-cpu": "2.21.0", ...}."""
    return {pin.name: pin.version for pin in read_lock(path)}


def local_wheel_pins(path: Path) -> list[Pin]:
    """The pins of a lock whose version has a local part (`torch==2.13.0+cpu`): on no public index."""
    return [pin for pin in read_lock(path) if "+" in pin.version]


def _download_wheels(pins: list[Pin], folder: Path) -> None:
    """`pip download` the pins (with their hashes) into a staging folder, then move the wheels into folder."""
    staging = folder / f".staging-{os.getpid()}"
    staging.mkdir(exist_ok=True)
    try:
        (staging / "requirements.txt").write_text("".join(pin.lines() for pin in pins), encoding="utf-8")
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
                                 "-r", str(staging / "requirements.txt"), "-d", str(staging)],
                                capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=1800, stdin=subprocess.DEVNULL)
        for wheel in staging.glob("*.whl") if result.returncode == 0 else []:
            wheel.chmod(0o644)  # as a checkout's files are: the build's cache key includes the mode
            os.replace(wheel, folder / wheel.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def stage_torch_wheels(lock: Path | None = TORCH_CPU_LOCK, folder: Path = WHEELS_DIR) -> list[Path]:
    """Put the locked PyTorch CPU wheel into the build context, from where this machine's pip finds it.

    PyTorch's CPU wheel is on PyTorch's own index, not PyPI. Where pip finds it
    in a local wheel folder (find-links in its configuration) or an index it uses,
    `pip download` copies it into docker/wheels/ and the build installs it from
    there; elsewhere the folder stays empty and the build asks PyTorch's index.
    Wheels already there with a locked hash are kept, others removed, so the
    build context holds exactly the lock's wheel. The download goes to a
    staging folder and is moved in only when complete.

    Args:
        lock: the hash-locked file whose local-version pins (`+cpu`) to stage; None
            (or a lock without such pins, as torch-gpu.lock) empties the folder, so
            that an image without PyTorch's CPU build does not carry its wheel.
        folder: the wheel folder in the build context.

    Returns:
        The wheels in the folder afterwards (empty when pip could not find them).
    """
    pins = local_wheel_pins(lock) if lock else []
    wanted = {value for pin in pins for value in pin.hashes}
    folder.mkdir(parents=True, exist_ok=True)
    kept = set()
    for path in folder.glob("*.whl"):
        digest = f"sha256:{sha256_of(path)}"
        if digest in wanted:
            kept.add(digest)
        else:  # an earlier lock's wheel: it would only make the build context larger
            path.unlink()
    if wanted - kept:
        _download_wheels(pins, folder)
    wheels = sorted(folder.glob("*.whl"))
    if pins and not wheels:
        print(f"note: pip on this machine has no copy of {pins[0].requirement}; "
              "the build downloads it from PyTorch's CPU index", flush=True)
    return wheels


def lock_commands() -> list[list[str]]:
    """The uv commands that write every requirements/*.lock, in order.

    They are the commands recorded in each lock file's header. The torch locks
    are constrained by TensorFlow's and the lab's, so that installing one after
    the other changes no version. The arm64 and Windows locks (classifier/machinery/platforms.py)
    are constrained by the x86-64 ones too, so that every package the platforms
    share has the same version everywhere; uv runs them with
    platforms.LOCK_ENVIRONMENT (macOS 14, which torch's macOS wheels need).
    """
    def compile_(*extra: str, output: str, target: str = _LOCK_PLATFORM[-1]) -> list[str]:
        return ["uv", "pip", "compile", "pyproject.toml", *extra, "--generate-hashes",
                *_LOCK_PLATFORM[:-1], target, "-o", output]

    commands = [
        compile_("--extra", "cpu", output="requirements/cpu.lock"),
        # tf-keras alone, for the course's own scripts (requirements/course.in says why), installed with
        # --no-deps; its one py3-none-any wheel serves every platform.
        ["uv", "pip", "compile", "requirements/course.in", "--no-deps", "--generate-hashes", *_LOCK_PLATFORM,
         "-o", platforms.COURSE_LOCK],
        compile_("--extra", "gpu", output="requirements/gpu.lock"),
        compile_("--extra", "lab", "-c", "requirements/cpu.lock", "-c", "requirements/gpu.lock",
                 output="requirements/lab.lock"),
        compile_("--extra", "torch-cpu", "-c", "requirements/cpu.lock", "-c", "requirements/lab.lock",
                 output="requirements/torch-cpu.lock"),
        compile_("--extra", "torch-gpu", "-c", "requirements/gpu.lock", "-c", "requirements/lab.lock",
                 output="requirements/torch-gpu.lock"),
    ]
    for other in platforms.PLATFORMS[1:]:
        # Windows's TensorFlow is tensorflow-cpu, as on x86-64 Linux; arm64's is `tensorflow`.
        cpu_extra = "cpu" if other.tensorflow == "tensorflow-cpu" else "cpu-arm64"
        commands += [
            compile_("--extra", cpu_extra, "-c", "requirements/cpu.lock", output=other.cpu_lock,
                     target=other.uv_platform),
            compile_("--extra", "lab", "-c", other.cpu_lock, "-c", "requirements/lab.lock",
                     output=other.lab_lock, target=other.uv_platform),
            compile_("--extra", f"torch-{other.name}", "-c", other.cpu_lock, "-c", other.lab_lock,
                     output=other.torch_lock, target=other.uv_platform),
        ]
    return commands


def torch_cpu_source() -> list[str]:
    """Where uv finds PyTorch's CPU wheel (not on PyPI): $LAB_TORCH_WHEELS, a folder, else PyTorch's CPU index."""
    if folder := os.environ.get("LAB_TORCH_WHEELS"):
        return ["--find-links", folder]
    return ["--extra-index-url", "https://download.pytorch.org/whl/cpu", "--index-strategy", "unsafe-best-match"]
