"""Installs the lab on this machine: a virtual environment in .venv from the hash-locked requirements that
match this platform (classifier/machinery/platforms.py), the Jupyter kernels and the notebook settings.

Standard library only, so that it runs before anything is installed. Linux and macOS run it through
./setup.sh (which first installs graphviz with apt when run as root); Windows runs it directly:

    py -3.11 install.py                 # Windows, in PowerShell or cmd; then .venv\\Scripts\\invoke --list
    ./setup.sh                          # Linux and macOS; then .venv/bin/invoke --list
    python3 install.py --dry-run        # the platform, its locks and every command, nothing installed
    python3 install.py --notebooks      # only the two settings that keep notebook outputs out of the clone

LAB_VARIANT=gpu takes the CUDA build (x86-64 Linux only); LAB_TORCH=0 leaves PyTorch out.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
JUPYTER_CONFIG = "docker/jupyter/jupyter_server_config.json"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


class SetupError(Exception):
    """Bad input or a failed step: one line for stderr, and the exit status."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """A wrong option is one line with the way out, not argparse's usage block."""
        raise SetupError(f"{message}; see python3 install.py --help")


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = _Parser(description="Install the lab into .venv from this platform's hash-locked requirements.")
    parser.add_argument("--dry-run", action="store_true", help="print the platform, its locks and the commands only")
    parser.add_argument("--notebooks", action="store_true",
                        help="only the Jupyter and git settings that keep notebook outputs out of the clone")
    parser.add_argument("--uname", default=f"{platform.system()} {platform.machine()}",
                        help="the machine, as `uname -sm` prints it (setup.sh passes it; default: this one's)")
    return parser.parse_args(argv)


def venv_python(windows: bool) -> str:
    """The environment's Python, as the student would type it on that platform."""
    return ".venv\\Scripts\\python.exe" if windows else ".venv/bin/python"


def choose_locks(uname: str, variant: str, with_torch: bool) -> tuple[object, list[str]]:
    """(the platform, its lock files in install order: TensorFlow's, the lab's, PyTorch's where it goes in).

    Raises SetupError (status 2) for a machine without locks or a variant it cannot have.
    """
    sys.path.insert(0, str(ROOT))  # the one platform table, readable before anything is installed
    from classifier.machinery import platforms

    machine = platforms.by_uname(uname)
    if machine is None and uname.upper().startswith(("MINGW", "MSYS", "CYGWIN")):
        # Git Bash's `uname -sm`: its bash can run setup.sh, but the lab's Python on Windows is the native one.
        raise SetupError(f"{uname} is Git Bash on Windows: run py -3.11 install.py in PowerShell or cmd instead")
    if machine is None:
        raise SetupError(f"no lock files for {uname}; supported: {platforms.supported()} (or use the lab container)")
    if machine != platforms.PLATFORMS[0] and variant != "cpu":
        raise SetupError(f"LAB_VARIANT={variant} is for x86-64 Linux with an NVIDIA GPU; on {uname} use LAB_VARIANT=cpu")
    lock = machine.cpu_lock if variant == "cpu" else f"requirements/{variant}.lock"
    if not (ROOT / lock).is_file():
        raise SetupError(f"LAB_VARIANT={variant} has no lock file {lock}; accepted: cpu, gpu")
    locks = [lock, machine.lab_lock]
    if with_torch and variant == "cpu":
        locks.append(machine.torch_lock)
    return machine, locks


def install_commands(python: str, locks: list[str]) -> list[tuple[list[str], list[str] | None]]:
    """Every pip command in order, each with the one to run if it fails (PyTorch's CPU index), or None."""
    pip = [python, "-m", "pip", "install", "--quiet"]
    # --require-hashes: every wheel must be the one the lock file names, byte for byte.
    commands: list[tuple[list[str], list[str] | None]] = [
        ([*pip, "--require-hashes", "-r", locks[0]], None),
        # JupyterLab, the notebook runner and TensorBoard: the notebooks run and are tested on the host too.
        ([*pip, "--require-hashes", "-r", locks[1]], None),
        # TensorFlow's legacy Keras for the course's own scripts (`invoke course`); --no-deps because its
        # wheel names the `tensorflow` distribution, which the lock above may provide as tensorflow-cpu.
        ([*pip, "--no-deps", "--require-hashes", "-r", "requirements/course.lock"], None),
    ]
    if len(locks) == 3:
        # x86-64 Linux's PyTorch CPU build is not on PyPI: pip finds it in a wheel folder (PIP_FIND_LINKS),
        # else on PyTorch's CPU index; the hash must match the lock either way. Elsewhere PyPI's is the CPU build.
        commands.append(([*pip, "--require-hashes", "-r", locks[2]],
                         [*pip, "--require-hashes", "--extra-index-url", TORCH_CPU_INDEX, "-r", locks[2]]))
    return commands


def shown(command: list[str]) -> str:
    """`command` as the student's shell would take it: cmd's quoting for a Windows path, else POSIX's."""
    return subprocess.list2cmdline(command) if "\\" in command[0] else shlex.join(command)


def _run(command: list[str], fallback: list[str] | None, dry_run: bool, quiet: bool = False) -> None:
    """Run `command` (its fallback if it fails; `quiet`: without its output); a failure is a SetupError naming it."""
    if dry_run:
        print(f"would run: {shown(command)}" + (f"  (if that fails: {shown(fallback)})" if fallback else ""))
        return
    # The first try's complaint is hidden where a fallback follows (pip cannot find the +cpu wheel offline).
    stdout = subprocess.DEVNULL if quiet else None
    status = subprocess.run(command, stdout=stdout, stderr=subprocess.DEVNULL if fallback else None).returncode
    if status and fallback:
        command = fallback
        status = subprocess.run(command, stdout=stdout).returncode
    if status:
        raise SetupError(f"`{shown(command)}` failed (its messages are above); fix that and run the setup again",
                         status)


def install_kernels(python: str, dry_run: bool) -> None:
    """The Jupyter kernels the notebooks name: "python3" (01-03) and "pytorch" (04), both this environment.

    The GPU image has a separate PyTorch environment behind "pytorch" (docker/Dockerfile).
    """
    kernel = [python, "-m", "ipykernel", "install", "--sys-prefix"]
    _run([*kernel, "--name", "python3", "--display-name", "Python (TensorFlow)"], None, dry_run, quiet=True)
    has_torch = not dry_run and subprocess.run([python, "-c", "import torch"], stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL).returncode == 0
    if has_torch or dry_run:
        if dry_run:
            print("where torch imports:")
        _run([*kernel, "--name", "pytorch", "--display-name", "Python (PyTorch)"], None, dry_run, quiet=True)


def notebook_settings(windows: bool, dry_run: bool) -> None:
    """Keep notebook outputs out of the clone (classifier/machinery/notebook_outputs.py says why).

    The lab's Jupyter settings (as in the container) make `jupyter lab` from .venv save the lecture's
    notebooks without outputs; git's nbstripout filter (.gitattributes; nbstripout from the lab lock)
    keeps any that another editor saved with them from being committed.
    """
    # The environment's own Jupyter config file (sys.prefix/etc/jupyter), which no package writes.
    target = Path(".venv", "etc", "jupyter", "jupyter_server_config.json")
    shown_target = str(target).replace("/", "\\") if windows else target.as_posix()
    # Git runs the filter through its own shell, which reads forward slashes on Windows too.
    strip = venv_python(windows).replace("\\", "/") + " -m nbstripout --keep-id --extra-keys metadata.language_info"
    settings = [["git", "config", "filter.nbstripout.clean", strip], ["git", "config", "filter.nbstripout.smudge", "cat"],
                ["git", "config", "diff.ipynb.textconv", f"{strip} -t"]]
    if dry_run:
        print(f"would copy {JUPYTER_CONFIG} to {shown_target}")
        for setting in settings:
            print(f"would run (in a git clone): {shlex.join(setting)}")
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(JUPYTER_CONFIG, target)
    inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL) if shutil.which("git") else None
    if inside is not None and inside.returncode == 0:
        for setting in settings:
            subprocess.run(setting, check=True)


def _warnings(windows: bool) -> list[str]:
    """What the lab can do without but the student should know before it is missed."""
    notes = []
    if sys.version_info[:2] != (3, 11):
        run = "py -3.11 install.py" if windows else "python3.11 install.py"
        notes.append(f"warning: the locks are made for Python 3.11 and this is {platform.python_version()}: {run}")
    if shutil.which("dot") is None:
        where = ("https://graphviz.org/download/, then add its bin folder to PATH" if windows
                 else "sudo apt-get install graphviz, on macOS brew install graphviz")
        notes.append(f"warning: graphviz is missing; install it ({where}) for the model picture")
    return notes


def install(uname: str, dry_run: bool) -> None:
    """Set up .venv for the machine `uname` names; with dry_run print what would run instead."""
    variant, with_torch = os.environ.get("LAB_VARIANT", "cpu"), os.environ.get("LAB_TORCH", "1") != "0"
    machine, locks = choose_locks(uname, variant, with_torch)
    windows = machine.name.startswith("windows")
    python = venv_python(windows)
    print(f"setup: {uname}: {', '.join(locks)}", flush=True)
    for note in _warnings(windows):
        print(note, file=sys.stderr, flush=True)
    _run([sys.executable, "-m", "venv", ".venv"], None, dry_run)
    for command, fallback in install_commands(python, locks):
        _run(command, fallback, dry_run)
    if with_torch and variant != "cpu":
        # PyTorch's CUDA build (CUDA 13) cannot share TensorFlow's environment: both
        # cuDNN wheels write site-packages/nvidia/cudnn/lib/libcudnn*.so.9.
        print("note: PyTorch is not installed beside CUDA TensorFlow; for it make a second environment:\n"
              "  python3 -m venv .venv-torch && .venv-torch/bin/pip install --require-hashes -r "
              "requirements/torch-gpu.lock && .venv-torch/bin/pip install --no-deps -e .", file=sys.stderr)
    install_kernels(python, dry_run)
    _run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "-e", "."], None, dry_run)
    notebook_settings(windows, dry_run)
    scripts = ".venv\\Scripts\\" if windows else ".venv/bin/"
    print(f"{'dry run done' if dry_run else 'lab ready'}: {scripts}invoke --list")
    print(f"data: the first {scripts}invoke train downloads CIFAR-10 (170 MB) into data/ and verifies it; "
          "offline, a classroom mirror or a USB stick: docs/data.md")


def main(argv: list[str]) -> int:
    """Run the setup from the repository root; a bad input or a failed step is one line on stderr."""
    try:
        arguments = _arguments(argv)
        os.chdir(ROOT)
        if arguments.notebooks:
            notebook_settings(platform.system() == "Windows", arguments.dry_run)
        else:
            install(arguments.uname, arguments.dry_run)
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.status
    except BrokenPipeError:
        # The reader went away (`--dry-run | head -1`): stop quietly, and let Python's exit flush go nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
