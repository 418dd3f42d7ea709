"""Notebooks stay stored without outputs after a run: the Jupyter server's save hook and setup.sh's git filter."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT

pytest.importorskip("nbstripout", reason="nbstripout comes with requirements/lab.lock")

NOTEBOOK = "notebooks/02_keras_classifier.ipynb"


def _as_after_a_run(notebook):
    """What JupyterLab saves after Run All: outputs, execution counts, the kernel's language_info."""
    for count, cell in enumerate((cell for cell in notebook.cells if cell.cell_type == "code"), start=1):
        cell.execution_count = count
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"cell {count} ran\n"),
                        nbformat.v4.new_output("execute_result", data={"text/plain": "42"}, execution_count=count)]
    notebook.metadata["language_info"] = {"name": "python", "version": "3.11.7", "mimetype": "text/x-python"}
    return notebook


def _outputs(path: Path) -> int:
    return sum(len(cell.get("outputs", [])) for cell in nbformat.read(path, as_version=4).cells)


def _git(repo: Path, *args: str, cwd=None) -> str:
    result = subprocess.run(["git", *args], cwd=cwd or repo, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def clone(tmp_path, monkeypatch):
    """A git clone of the notebooks with setup.sh and .gitattributes, set up by `./setup.sh --notebooks`.

    Its .venv is a fresh environment that sees this one's packages (nbstripout, jupyter_server).
    """
    repo = tmp_path / "lab"
    for name in ("setup.sh", "install.py", ".gitattributes", ".gitignore", "docker/jupyter/jupyter_server_config.json"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "notebooks", repo / "notebooks")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", repo / ".venv"], check=True, timeout=120)
    site = next((repo / ".venv" / "lib").glob("python3*/site-packages"))
    (site / "lab.pth").write_text("\n".join(path for path in sys.path if path.endswith("site-packages")) + "\n")
    for key in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.setenv(key, "student")
    for key in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(key, "student@example.org")
    _git(repo, "init", "-q")
    result = subprocess.run(["bash", "setup.sh", "--notebooks"], cwd=repo, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "lab")
    return repo


def test_the_stored_notebooks_are_already_stripped():
    # Stripping a stored notebook changes nothing, so the filter leaves a fresh clone clean.
    from classifier.machinery.notebook_outputs import strip

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert nbformat.writes(strip(nbformat.read(path, as_version=4))) + "\n" == path.read_text(), path.name


def _save_as_jupyter(root: Path, config: Path, path: str, notebook) -> None:
    """Save `notebook` at `path` the way a Jupyter server configured by `config` (a JSON config file) does."""
    from jupyter_server.services.contents.filemanager import FileContentsManager

    settings = json.loads(config.read_text())["FileContentsManager"]
    manager = FileContentsManager(root_dir=str(root), **settings)
    manager.save({"type": "notebook", "format": "json", "content": json.loads(nbformat.writes(notebook))}, path)


def test_jupyter_saves_a_run_of_a_lecture_notebook_without_outputs(clone):
    # setup.sh gave the host's `jupyter lab` the container's settings.
    config = clone / ".venv" / "etc" / "jupyter" / "jupyter_server_config.json"
    assert config.read_text() == (ROOT / "docker" / "jupyter" / "jupyter_server_config.json").read_text()
    ran = _as_after_a_run(nbformat.read(clone / NOTEBOOK, as_version=4))
    _save_as_jupyter(clone, config, NOTEBOOK, ran)
    _save_as_jupyter(clone, config, "my_scratch.ipynb", ran)
    assert (clone / NOTEBOOK).read_text() == (ROOT / NOTEBOOK).read_text()  # byte for byte the stored one
    assert _git(clone, "status", "--porcelain") == "?? my_scratch.ipynb\n"
    assert _outputs(clone / "my_scratch.ipynb") > 0  # a student's own notebook elsewhere keeps its outputs


def test_the_git_filter_keeps_outputs_from_another_editor_out_of_commits(clone):
    notebook = clone / NOTEBOOK
    nbformat.write(_as_after_a_run(nbformat.read(notebook, as_version=4)), notebook)  # e.g. VS Code's save
    assert _outputs(notebook) > 0  # the student keeps what the run showed
    assert _git(clone, "diff", cwd=clone / "notebooks") == ""  # from a subfolder too
    _git(clone, "add", "-A")
    assert _git(clone, "status", "--porcelain") == ""  # staging the run changes nothing
    stored = json.loads(_git(clone, "show", f":{NOTEBOOK}"))
    assert "language_info" not in stored["metadata"]
    assert all(not cell.get("outputs") and cell.get("execution_count") is None for cell in stored["cells"])
    # The control: it is the filter that makes the file on disk equal to the stored one.
    index_blob = _git(clone, "rev-parse", f":{NOTEBOOK}").strip()
    assert _git(clone, "hash-object", "--no-filters", NOTEBOOK).strip() != index_blob


def test_setup_sh_notebooks_outside_a_git_clone_sets_only_jupyter(tmp_path):
    for name in ("setup.sh", "install.py", "docker/jupyter/jupyter_server_config.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    result = subprocess.run(["bash", "setup.sh", "--notebooks"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, env={**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path.parent)})
    assert result.returncode == 0 and result.stderr == ""
    assert (tmp_path / ".venv" / "etc" / "jupyter" / "jupyter_server_config.json").is_file()
