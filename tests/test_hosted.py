"""The lab in Google Colab: the badges, the first cell, and the notebooks in a Colab-like environment.

    pytest tests/test_hosted.py -m "not colab"     # seconds: badges, the cell's lab path, the version report
    pytest -m colab tests/test_hosted.py            # minutes: the notebooks on Colab's pins (python3.13)

The Colab-like environment is a Python 3.13 venv with Colab's pins (COLAB_PINS,
August 2026's image) and a stand-in `google.colab` module imported as the
kernel starts, as Colab's kernel does. It is built once into
$LAB_COLAB_WORK (default /var/tmp/classifier-colab, kept between CI runs like
the arm64 tier's root) with a wheelhouse of what the lab adds; the notebooks
then run from their first cell with pip offline (PIP_NO_INDEX) and the
repository cloned from a local mirror of this working tree.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbclient
import nbformat
import pytest

from classifier.machinery import hosted
from conftest import ROOT, run_folder_from, run_invoke

WORK = Path(os.environ.get("LAB_COLAB_WORK", "/var/tmp/classifier-colab"))
# Colab's image of August 2026 (the list). PyPI's torch 2.11 is the CUDA build with several GB of
# NVIDIA wheels and its +cpu build is on PyTorch's own index only, so the venv has no torch: notebook 04 is
# left out of the Colab-like run (tests/test_notebooks.py runs it in the lab).
COLAB_PINS = ["tensorflow==2.20.0", "keras==3.13.2", "tf_keras==2.20.1", "numpy==2.1.3", "ipykernel==6.17.1",
              "setuptools"]
NOTEBOOKS = ["01_tensor_basics", "02_keras_classifier", "03_advanced_classifier", "04_pytorch_classifier"]
SMALL = {"NOTEBOOK_LIMIT": "600", "NOTEBOOK_EPOCHS": "1"}
STAND_IN = '''"""A stand-in for Colab's google.colab: its presence is what the notebooks' first cell looks for."""
'''
LAUNCHER = '''# The Colab-like kernel: google.colab is imported as the kernel starts, as in Colab.
import sys
sys.path.insert(0, {stand_in!r})
import google.colab  # noqa: F401
from ipykernel import kernelapp
kernelapp.launch_new_instance()
'''


def test_every_badge_opens_the_notebook_on_the_default_branch():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in NOTEBOOKS:
        notebook = f"notebooks/{name}.ipynb"
        url = hosted.badge_url(notebook)
        assert url == f"https://colab.research.google.com/github/{hosted.REPOSITORY}/blob/main/{notebook}"
        assert url in readme, notebook
        cells = nbformat.read(ROOT / notebook, as_version=4).cells
        assert url in cells[0].source, f"{notebook}: the header cell has no Open in Colab badge"
        # The first code cell clones the same repository the badge opens.
        first_code = next(cell for cell in cells if cell.cell_type == "code").source
        assert f'"https://github.com/{hosted.REPOSITORY}"' in first_code, notebook
    urls = set(re.findall(r"https://colab\.research\.google\.com/github/[^)\s\"]+", readme))
    assert urls == {hosted.badge_url(f"notebooks/{name}.ipynb") for name in NOTEBOOKS}
    assert f"https://mybinder.org/v2/gh/{hosted.REPOSITORY}/{hosted.BRANCH}" in readme


def test_outside_colab_the_first_cell_does_nothing(capsys, monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.delenv("CLASSIFIER_RUNS_DIR", raising=False)
    assert hosted.setup_colab("fashion_mnist") is None
    assert capsys.readouterr() == ("", "")
    assert "CLASSIFIER_RUNS_DIR" not in os.environ


def test_the_version_report_names_each_difference_from_the_locks(tmp_path):
    requirements = tmp_path / "requirements"
    requirements.mkdir()
    for lock in set(hosted.FRAMEWORKS.values()):
        shutil.copy(ROOT / "requirements" / lock, requirements / lock)
    # A lock that pins another NumPy than the installed one: the report must name both.
    cpu = requirements / "cpu.lock"
    installed_numpy = __import__("numpy").__version__
    cpu.write_text(re.sub(r"^numpy==\S+", "numpy==1.0.0", cpu.read_text(encoding="utf-8"), flags=re.M),
                   encoding="utf-8")
    assert ("numpy", installed_numpy, "1.0.0") in hosted.version_differences(tmp_path)
    report = "\n".join(hosted.version_report(tmp_path))
    assert f"numpy {installed_numpy} [1.0.0]" in report and "invoke compare" in report
    # The lab's own environment against its own locks: nothing differs.
    if sys.version_info[:2] == (3, 11):
        assert hosted.version_report(ROOT) == ["Colab's versions are the lab's locked versions."]


def test_missing_requirements_are_the_pins_this_environment_lacks(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\ndependencies = ["invoke==3.0.3", "no-such-lab-package==1.0"]\n', encoding="utf-8")
    assert hosted.missing_requirements(tmp_path) == ["no-such-lab-package==1.0"]
    assert hosted.missing_requirements(ROOT) == []


@pytest.mark.colab
def test_notebooks_in_a_colab_like_environment_match_the_lab(tmp_path, monkeypatch, fashion_source):
    python = _colab_environment()
    versions = subprocess.run([str(python), "-c", "import sys, tensorflow, keras, numpy; print("
                               "sys.version.split()[0], tensorflow.__version__, keras.__version__, numpy.__version__)"],
                              capture_output=True, text=True, check=True).stdout.split()
    log = [f"Colab-like environment: Python {versions[0]}, TensorFlow {versions[1]}, Keras {versions[2]}, "
           f"NumPy {versions[3]} (no torch: notebook 04 left out)"]
    content = tmp_path / "content"
    content.mkdir()
    mirror = _mirror_of_the_working_tree(tmp_path / "mirror")
    for key in ("CLASSIFIER_DATA_DIR", "CLASSIFIER_RUNS_DIR", "PYTHONPATH", "CLASSIFIER_NUMERICS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {**SMALL, "LAB_HOME": str(content), "LAB_REPOSITORY": mirror.as_uri(),
                       "NOTEBOOK_DATA_SOURCE": str(fashion_source), "PIP_NO_INDEX": "1",
                       "PIP_FIND_LINKS": str(WORK / "wheelhouse"), "JUPYTER_PATH": str(WORK / "jupyter")}.items():
        monkeypatch.setenv(key, value)
    lab_clone = content / "image-classifier-lab"
    verdicts = {}
    for name in NOTEBOOKS[:3]:
        started = time.perf_counter()
        cells = _execute(ROOT / "notebooks" / f"{name}.ipynb", "colab")
        text = "".join(cells)
        seconds = time.perf_counter() - started
        if name == NOTEBOOKS[0]:
            first_output = cells[1]  # the first code cell, below the header
            log.append(f"01's first cell printed:\n{first_output}")
            assert f"Colab: data in {lab_clone / 'data'}, runs in {lab_clone / 'runs'}" in first_output
            assert "Colab: installed invoke==3.0.3" in first_output
            assert "python 3.13" in first_output and "tensorflow 2.20.0 [2.21.0]" in first_output
            assert hosted.MEASURED in first_output
            log.append(f"{name}: ran in {seconds:.0f} s, no error, no stderr")
            continue
        assert "Colab: fashion_mnist: 4 file(s) verified" in text
        colab_run = run_folder_from(text)
        assert colab_run.parent == lab_clone / "runs", colab_run
        verdicts[name] = _compare_with_the_lab(name, colab_run, tmp_path, monkeypatch, fashion_source)
        log.append(f"{name}: ran in {seconds:.0f} s, no error, no stderr; invoke compare LAB COLAB: {verdicts[name]}")
    (ROOT / "test-output").mkdir(exist_ok=True)
    (ROOT / "test-output" / "colab-check.log").write_text("\n".join(log) + "\n", encoding="utf-8")
    print("\n".join(log))
    for name, verdict in verdicts.items():
        # Anything but IDENTICAL must name its difference and the tolerance it was judged by...
        assert verdict.startswith("IDENTICAL") or re.match(r"WITHIN TOLERANCE: largest metric difference", verdict), \
            f"{name}: {verdict}"
        # ... and what Colab prints to students (hosted.MEASURED) must be what was measured here.
        assert verdict.startswith("IDENTICAL") or "IDENTICAL" not in hosted.MEASURED, \
            f"{name}: {verdict}; hosted.MEASURED says IDENTICAL: correct it"


def _compare_with_the_lab(name: str, colab_run: Path, tmp_path: Path, monkeypatch, fashion_source) -> str:
    """Run the notebook in the lab's own kernel (this environment), then `invoke compare` the two run folders."""
    with monkeypatch.context() as lab_env:
        for key in ("LAB_HOME", "LAB_REPOSITORY", "PIP_NO_INDEX", "PIP_FIND_LINKS", "JUPYTER_PATH"):
            lab_env.delenv(key)
        lab_env.setenv("CLASSIFIER_DATA_DIR", str(tmp_path / "lab" / "data"))
        lab_env.setenv("CLASSIFIER_RUNS_DIR", str(tmp_path / "lab" / "runs"))
        lab_env.setenv("PYTHONPATH", str(ROOT))
        cells = _execute(ROOT / "notebooks" / f"{name}.ipynb", "python3")
    assert cells[1] == "", cells[1]  # the first code cell shows nothing in the lab
    text = "".join(cells)
    result = run_invoke("compare", str(run_folder_from(text)), str(colab_run))
    assert result.returncode in (0, 1), result.stderr
    return next(line for line in result.stdout.splitlines()
                if line.startswith(("IDENTICAL", "WITHIN TOLERANCE", "DIFFERENT")))


def _execute(path: Path, kernel: str) -> list[str]:
    """Run a notebook from its first cell in `kernel`; fail on an error or any stderr output. Returns each cell's text."""
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=900, kernel_name=kernel,
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    cells, noise = [], []
    for cell in notebook.cells:
        outputs = cell.get("outputs", [])
        noise += [output["text"] for output in outputs if output.get("name") == "stderr"]
        cells.append("".join(output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
                             for output in outputs))
    assert noise == [], f"{path.name} in {kernel}: {noise}"
    return cells


def _colab_python() -> str | None:
    candidates = [os.environ.get("LAB_COLAB_PYTHON", ""), *sorted(glob.glob(
        os.path.expanduser("~/.pyenv/versions/3.13*/bin/python3.13"))), shutil.which("python3.13") or ""]
    return next((candidate for candidate in candidates if candidate and subprocess.run(
        [candidate, "--version"], capture_output=True).returncode == 0), None)


def _colab_environment() -> Path:
    """The cached Colab-like venv, its wheelhouse and its kernel spec; built when missing or its pins changed."""
    venv, stamp = WORK / "venv", WORK / "venv" / "colab-pins.txt"
    wanted = "\n".join(COLAB_PINS) + "\n"
    if not (stamp.is_file() and stamp.read_text(encoding="utf-8") == wanted):
        base = _colab_python()
        if base is None:
            reason = "needs Python 3.13 (pyenv install 3.13, or LAB_COLAB_PYTHON=PATH)"
            if os.environ.get("CI") == "true":
                pytest.fail(f"CI {reason}")
            pytest.skip(reason)
        shutil.rmtree(WORK, ignore_errors=True)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", *COLAB_PINS], check=True, timeout=3600)
        stamp.write_text(wanted, encoding="utf-8")
        (venv / "colab-freeze.txt").write_text(_freeze(venv), encoding="utf-8")
    # Back to Colab's image as built: what an earlier run's first cell installed goes (seconds).
    added = set(_freeze(venv).split()) - set((venv / "colab-freeze.txt").read_text(encoding="utf-8").split())
    names = sorted({re.split(r"==| @ ", line)[0] for line in added} | {"classifier"})
    subprocess.run([str(venv / "bin" / "pip"), "uninstall", "--quiet", "--yes", *names], capture_output=True)
    _wheelhouse(venv / "bin" / "pip")
    stand_in = WORK / "stand-in"
    (stand_in / "google" / "colab").mkdir(parents=True, exist_ok=True)
    (stand_in / "google" / "colab" / "__init__.py").write_text(STAND_IN, encoding="utf-8")
    (stand_in / "colab_kernel.py").write_text(LAUNCHER.format(stand_in=str(stand_in)), encoding="utf-8")
    spec = WORK / "jupyter" / "kernels" / "colab"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(venv / "bin" / "python"), str(stand_in / "colab_kernel.py"), "-f", "{connection_file}"],
        "display_name": "Python 3 (Colab-like)", "language": "python",
        "env": {"PYDEVD_DISABLE_FILE_VALIDATION": "1"}}), encoding="utf-8")
    return venv / "bin" / "python"


def _freeze(venv: Path) -> str:
    """`pip freeze` of the venv, less the lab itself (an editable install)."""
    return subprocess.run([str(venv / "bin" / "pip"), "freeze", "--exclude-editable"], capture_output=True,
                          text=True, check=True).stdout


def _wheelhouse(pip: Path) -> None:
    """The wheels the first cell installs offline: the lab's pins that the venv lacks, Colab's frameworks held."""
    house = WORK / "wheelhouse"
    stamp = house / "requirements.txt"
    # The lab's pins that the Colab-like venv lacks, asked of that venv's Python, as the first cell asks Colab's.
    missing = subprocess.run([str(pip.parent / "python"), "-c", "from classifier.machinery import hosted; "
                              "print('\\n'.join(hosted.missing_requirements()))"],
                             capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wanted = missing.stdout
    if stamp.is_file() and stamp.read_text(encoding="utf-8") == wanted:
        return
    house.mkdir(parents=True, exist_ok=True)
    held = house / "colab.txt"
    held.write_text("\n".join(pin for pin in COLAB_PINS if "==" in pin) + "\n", encoding="utf-8")
    subprocess.run([str(pip), "download", "--quiet", "-d", str(house), "-c", str(held), *wanted.split(), "setuptools"],
                   check=True, timeout=1800)
    stamp.write_text(wanted, encoding="utf-8")


def _mirror_of_the_working_tree(mirror: Path) -> Path:
    """A git repository holding this working tree as it is (tracked and new files): the 'GitHub' the cell clones."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file() and not source.is_symlink():
            (mirror / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, mirror / name)
    for command in (["init", "--quiet"], ["add", "--all"],
                    ["-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "--quiet", "-m", "mirror"]):
        subprocess.run(["git", *command], cwd=mirror, check=True, capture_output=True)
    return mirror


def test_binder_installs_what_setup_sh_installs():
    """binder/ builds the lab as ./setup.sh does on x86-64 Linux: the same locks in the same order, graphviz, 3.11."""
    dry_run = subprocess.run(["bash", str(ROOT / "setup.sh"), "--dry-run", "--uname", "Linux x86_64"], cwd=ROOT,
                             capture_output=True, text=True)
    assert dry_run.returncode == 0, dry_run.stderr
    post_build = (ROOT / "binder" / "postBuild").read_text(encoding="utf-8")
    assert subprocess.run(["bash", "-n", str(ROOT / "binder" / "postBuild")]).returncode == 0
    locks_of = lambda text: re.findall(r"-r (requirements/[\w-]+\.lock)", text)  # noqa: E731
    assert locks_of(post_build) == list(dict.fromkeys(locks_of(dry_run.stdout))) != []
    assert "--name pytorch" in post_build and "invoke data --dataset fashion_mnist" in post_build
    assert (ROOT / "binder" / "apt.txt").read_text(encoding="utf-8").split()[-1] == "graphviz"
    assert (ROOT / "binder" / "runtime.txt").read_text(encoding="utf-8").strip() == "python-3.11"
    assert "CLASSIFIER_NUMERICS=portable" in (ROOT / "binder" / "start").read_text(encoding="utf-8")
