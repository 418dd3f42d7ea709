"""The course's own scripts, unchanged, in the lab: `invoke course SCRIPT`.

    git clone https://github.com/goodgodgd/detlec   # the course's scripts, in the lab's folder
    invoke data --dataset cifar10                   # once (docs/data.md)
    invoke course detlec/01_classifiers/tf_classifier_basic.py
    invoke course detlec/01_classifiers/pt_classifier.py

The course's scripts are the lecturer's, in the public repository
goodgodgd/detlec (https://github.com/goodgodgd/detlec), not in the lab; the
lab adds the verified datasets they load, offline, and the environment each
needs. Its TensorFlow scripts (01_classifiers) were written for Keras 2. In Keras 3, which TensorFlow 2.21 ships, their
`num_class = tf.reduce_max(y).numpy() + 1` is a NumPy integer that
`layers.Dense(units=num_class)` refuses (`ValueError: Received an invalid
value for units`). TensorFlow's own way back is its legacy Keras: with
`TF_USE_LEGACY_KERAS=1`, `tf.keras` and `tensorflow.keras` are tf_keras, the
Keras 2 line (requirements/course.lock), and the scripts run as written.

A script that imports torch or torchvision (`pt_classifier.py`) needs a
torchvision that loads, which the lab's own environment cannot give on the
CPU route: PyPI's torchvision is a CUDA build that fails beside PyTorch's CPU
build (`operator torchvision::nms does not exist`), and PyTorch's CPU build of
torchvision is only on PyTorch's own index. PyPI's CUDA build of torch with
its torchvision (requirements/torch-gpu.lock) runs on a CPU too: it is the
PyTorch environment, `.venv-torch` on the host, /opt/venv-torch in the GPU
image, or any Python named by $LAB_TORCH_PYTHON, and the script runs there.
A script that imports torch but not torchvision runs with the first of those
that has torch, the lab's own environment included.

Either way the script runs in the current folder (where it writes its
pictures and where `./data` is), as `python SCRIPT` would, and its loaders
read the files `invoke data` verified, offline.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

from classifier.config import UserError
from classifier.machinery import platforms

LEGACY_KERAS = {"TF_USE_LEGACY_KERAS": "1"}
INSTALL_HINT = platforms.COURSE_INSTALL_HINT

# The modules that make a script a PyTorch one.
TORCH_MODULES = frozenset({"torch", "torchvision"})
# Where the PyTorch environment is looked for, after $LAB_TORCH_PYTHON: the checkout's (setup.sh says how
# to make it), the GPU image's (docker/Dockerfile), then this one (where a torchvision that loads was installed).
TORCH_PYTHONS = (Path(__file__).resolve().parents[2] / ".venv-torch" / "bin" / "python",
                 Path("/opt/venv-torch/bin/python"), Path(sys.executable))
# Exit status 0 where every module named after it is installed.
FIND_MODULES = "import importlib.util as u, sys; sys.exit(not all(u.find_spec(name) for name in sys.argv[1:]))"
TORCH_ENV_HINT = ("python3 -m venv .venv-torch && .venv-torch/bin/pip install --require-hashes "
                  "-r requirements/torch-gpu.lock")


def run_script(script: str, args: tuple[str, ...] = ()) -> int:
    """Run a course script in the environment it needs and return its exit status.

    A TensorFlow script runs with this Python and TensorFlow's legacy Keras; a
    PyTorch one (it imports torch or torchvision) with the PyTorch environment's.

    Args:
        script: the script's path, e.g. tf_classifier_basic.py or pt_classifier.py.
        args: command-line arguments for it.

    Raises:
        UserError: the script is not a Python file, or the environment it needs is missing.
    """
    path = Path(script)
    if not path.is_file():
        raise UserError(f"{script} is not a file; give the path of a course script, e.g. "
                        "detlec/01_classifiers/tf_classifier_basic.py")
    # Python would run any file and answer a notebook's JSON or a text with a traceback.
    if path.suffix == ".ipynb":
        raise UserError(f"{script} is a notebook, not a script: open it in JupyterLab (invoke lab), "
                        "or give the course's .py script")
    if path.suffix != ".py":
        raise UserError(f"{script} is not a Python script (.py); give a course script, e.g. "
                        "detlec/01_classifiers/tf_classifier_basic.py")
    if modules := torch_modules(path):
        return subprocess.run([torch_python(script, modules), str(path), *args]).returncode
    if find_spec("tf_keras") is None:
        raise UserError(f"TensorFlow's legacy Keras (tf_keras) is not installed here; install it with: {INSTALL_HINT}")
    return subprocess.run([sys.executable, str(path), *args], env={**os.environ, **LEGACY_KERAS}).returncode


def torch_modules(path: Path) -> tuple[str, ...]:
    """Which of torch and torchvision a script imports anywhere (read, not run), sorted; () for none.

    A script Python cannot read counts as a TensorFlow one: running it shows
    the student Python's own message for the bad line.
    """
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError):
        return ()
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        else:
            continue
        found.update(name.partition(".")[0] for name in names)
    return tuple(sorted(found & TORCH_MODULES))


def torch_python(script: str, modules: tuple[str, ...] = ("torchvision",)) -> str:
    """The Python of the PyTorch environment: $LAB_TORCH_PYTHON, else the first of TORCH_PYTHONS with `modules`.

    Args:
        script: the script's path as given, for the message.
        modules: what the script imports (torch_modules): a script that imports only torch runs where torch is,
            e.g. the lab's own .venv; one that imports torchvision needs a torchvision that loads.

    Returns:
        The interpreter's path.

    Raises:
        UserError: $LAB_TORCH_PYTHON has no torchvision, or no environment here has one (what to do differs
            in the CPU image, where PyTorch's CPU build has none).
    """
    needed = " and ".join(modules)
    if named := os.environ.get("LAB_TORCH_PYTHON"):
        if not has_modules(named, modules):
            raise UserError(f"LAB_TORCH_PYTHON={named} is not a Python with {needed}; point it at the PyTorch "
                            f"environment's (e.g. .venv-torch/bin/python, made with: {TORCH_ENV_HINT}) or unset it")
        return named
    for candidate in TORCH_PYTHONS:
        if has_modules(str(candidate), modules):
            return str(candidate)
    if "torchvision" not in modules:
        raise UserError(f"{script} imports torch, and no Python here has it; make the PyTorch environment with: "
                        f"{TORCH_ENV_HINT} (or set LAB_TORCH_PYTHON to a Python that has it)")
    if os.environ.get("LAB_VARIANT") == "cpu":  # docker/Dockerfile sets it
        raise UserError(f"{script} imports torch/torchvision, and this CPU image's PyTorch (the CPU build) has no "
                        "torchvision (its CPU build is only on PyTorch's own index); run the script on the host "
                        f"(after: {TORCH_ENV_HINT}) or in the GPU image (invoke build --variant gpu)")
    raise UserError(f"{script} imports torch/torchvision, and no Python here has torchvision; make the PyTorch "
                    f"environment with: {TORCH_ENV_HINT} (or set LAB_TORCH_PYTHON to a Python that has it)")


def has_torchvision(python: str) -> bool:
    """Whether a Python runs and finds torchvision (see has_modules)."""
    return has_modules(python, ("torchvision",))


def has_modules(python: str, modules: tuple[str, ...]) -> bool:
    """Whether a Python runs and finds every one of `modules` (looked up, not imported: a CUDA build of torch
    takes seconds to import).

    Args:
        python: the interpreter's path.
        modules: top-level module names, e.g. ("torch",).

    Returns:
        False where it is missing, cannot run, or lacks one of them.
    """
    try:
        found = subprocess.run([python, "-c", FIND_MODULES, *modules], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return found.returncode == 0
