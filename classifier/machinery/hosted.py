"""The lab where a student has no machine of their own: Google Colab (docs/hosted.md).

A notebook's first cell clones the repository, installs the lab's code
without its pins (`pip install --no-deps -e`) and calls `lab.setup_colab`,
which does in Colab what ./setup.sh does on a laptop; anywhere else it does
nothing:

    from classifier import lab
    lab.setup_colab("fashion_mnist")

It keeps Colab's own TensorFlow, Keras, NumPy and PyTorch (a constraints file
pins what is installed), adds what the lab needs that Colab lacks, puts
data/ and runs/ in the clone under /content (on Google Drive when it is
mounted, so that runs outlive the runtime), fetches and verifies the dataset,
and prints which versions differ from the lab's locks and what was measured
about it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

from classifier.config import PROJECT_ROOT
from classifier.machinery import locks

# The repository the badges and the first cells name; tests/test_hosted.py checks every badge uses it.
REPOSITORY = "image-classifier-lab/image-classifier-lab"
BRANCH = "main"
# Where Colab mounts Google Drive (google.colab.drive.mount("/content/drive")).
DRIVE = Path("/content/drive/MyDrive")
# The frameworks Colab brings, each with the lock that pins the lab's version; the lab never replaces them.
FRAMEWORKS = {"tensorflow": "cpu.lock", "keras": "cpu.lock", "numpy": "cpu.lock",
              "torch": "torch-cpu.lock", "torchvision": "torch-gpu.lock", "ipykernel": "lab.lock"}
# What tests/test_hosted.py measured in a Colab-like environment (Python 3.13, Colab's pins) against the
# lab's own environment on the same machine; printed in Colab beside the versions that differ.
MEASURED = ("measured 2026-12-07 (tests/test_hosted.py: Colab's pins on Python 3.13 against the lab's locks, same "
            "x86-64 CPU): notebooks 01-03 ran unchanged, and notebooks 02 and 03 (600 images, 1 epoch) gave runs "
            "that `invoke compare` judged IDENTICAL to the lab's own")


def in_colab() -> bool:
    """True in a Google Colab kernel, which imports google.colab as it starts."""
    return "google.colab" in sys.modules


def badge_url(notebook: str) -> str:
    """The "Open in Colab" link of a notebook (e.g. "notebooks/02_keras_classifier.ipynb") on the default branch."""
    return f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/{notebook}"


def setup_colab(dataset: str | None = None, lab_root: Path = PROJECT_ROOT, drive: Path = DRIVE) -> Path | None:
    """In Colab, what ./setup.sh does on a laptop; elsewhere nothing.

    Args:
        dataset: the notebook's dataset to fetch and verify (None: none).
        lab_root: the clone the first cell installed.
        drive: Google Drive's folder when mounted; data/ and runs/ go there if it exists.

    Returns:
        The folder holding data/ and runs/ in Colab; None elsewhere.
    """
    if not in_colab():
        return None
    _install_missing(lab_root)
    # keras.utils.plot_model's picture needs graphviz; Colab's kernel runs as root (Colab is Linux: geteuid exists).
    if shutil.which("dot") is None and hasattr(os, "geteuid") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "graphviz"], check=True, stdout=subprocess.DEVNULL)
    home = drive / "image-classifier-lab" if drive.is_dir() else lab_root
    # Set in the kernel's environment, so that `!invoke compare` and `!invoke train` find the same folders.
    os.environ["CLASSIFIER_DATA_DIR"] = str(home / "data")
    os.environ["CLASSIFIER_RUNS_DIR"] = str(home / "runs")
    print(f"Colab: data in {home / 'data'}, runs in {home / 'runs'}")
    if dataset:
        _fetch(dataset, home / "data")
    for line in version_report(lab_root):
        print(line)
    return home


def version_differences(lab_root: Path = PROJECT_ROOT) -> list[tuple[str, str, str]]:
    """(name, installed version, the lab's locked version) for each framework whose versions differ."""
    differences = []
    if sys.version_info[:2] != (3, 11):
        differences.append(("python", ".".join(map(str, sys.version_info[:3])), "3.11"))
    for name, lock in FRAMEWORKS.items():
        pins = locks.locked_versions(lab_root / "requirements" / lock)
        locked = pins.get(name) or pins.get(f"{name}-cpu") or ""
        installed = _installed(name) or _installed(f"{name}-cpu")
        if installed and locked and installed != locked:
            differences.append((name, installed, locked))
    return differences


def version_report(lab_root: Path = PROJECT_ROOT) -> list[str]:
    """The lines a Colab notebook prints about the versions that differ from the lab's locks."""
    differences = version_differences(lab_root)
    if not differences:
        return ["Colab's versions are the lab's locked versions."]
    lines = ["Colab's versions that differ from the lab's locks (Colab's kept, the lab's in brackets):",
             "  " + ", ".join(f"{name} {installed} [{locked}]" for name, installed, locked in differences),
             f"What that means for the results, {MEASURED}.",
             "Other versions may change the last digits of a result: compare a run with `invoke compare` "
             "before taking it as the lab's (docs/hosted.md)."]
    return lines


def missing_requirements(lab_root: Path = PROJECT_ROOT) -> list[str]:
    """The pyproject's pinned dependencies that this environment does not have at all (Colab lacks invoke...)."""
    project = tomllib.loads((lab_root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [pin for pin in project["dependencies"] if _installed(pin.split("==")[0]) is None]


def _install_missing(lab_root: Path) -> None:
    """pip install what the lab lacks, with Colab's frameworks held at their installed versions."""
    missing = missing_requirements(lab_root)
    if not missing:
        return
    held = [f"{name}=={version}" for name in (*FRAMEWORKS, "tensorflow-cpu") if (version := _installed(name))]
    with tempfile.TemporaryDirectory() as folder:
        constraints = Path(folder) / "colab.txt"
        constraints.write_text("\n".join(held) + "\n", encoding="utf-8")
        # --no-warn-conflicts: the lab's own pins (keras==3.15.1 ...) are left unmet on purpose; the
        # version report below says which, and what that was measured to change.
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--no-warn-conflicts", "-c", str(constraints), *missing], check=True)
    print(f"Colab: installed {', '.join(missing)}")


def _fetch(dataset_name: str, data_dir: Path) -> None:
    """Download (or import from $NOTEBOOK_DATA_SOURCE) the dataset and verify every file, as `invoke data` does."""
    from classifier.machinery import download
    from classifier.machinery.datasets import get_dataset

    dataset = get_dataset(dataset_name)
    source = os.environ.get("NOTEBOOK_DATA_SOURCE")
    if source:
        download.import_from(dataset, data_dir, Path(source))
    else:
        download.fetch(dataset, data_dir, progress=False)
    print(f"Colab: {dataset_name}: {len(download.verified_files(dataset, data_dir))} file(s) verified")


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
