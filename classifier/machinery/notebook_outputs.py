"""Notebooks are stored without outputs: running the lecture leaves the clone clean.

One rule (nbstripout's, from requirements/lab.lock): outputs and execution
counts go, and so does `metadata.language_info`, which Jupyter rewrites with
the kernel's Python version on every run; cell ids and the kernel's name stay.
The stored notebooks are already in that form, so stripping them changes nothing.

- JupyterLab's server strips every notebook it saves in a folder named
  notebooks/ (the lecture's; a student's own notebook elsewhere keeps its
  outputs): `strip_before_save` is the FileContentsManager's pre_save_hook in
  docker/jupyter/jupyter_server_config.json, which the container reads
  (JUPYTER_CONFIG_PATH) and setup.sh copies into .venv for `jupyter lab` on the
  host. The browser still shows the outputs until the notebook is closed.
- git's `nbstripout` filter, named by .gitattributes and configured by
  setup.sh, strips a notebook that another editor saved with outputs whenever
  git stages it, so outputs are never committed. (`git status` alone may still
  list such a file as modified: git trusts a changed file size without running
  the filter; `git diff` shows nothing.)

    ./setup.sh --notebooks    # only these two settings, for a clone set up before them
"""

from __future__ import annotations

from pathlib import PurePosixPath

# The same as setup.sh's `nbstripout --keep-id --extra-keys metadata.language_info`.
KEEP_IDS = True
EXTRA_KEYS = ["metadata.language_info"]
LECTURE_FOLDER = "notebooks"


def strip(notebook):
    """Remove outputs, execution counts and language_info from `notebook` (an nbformat NotebookNode), in place."""
    import nbstripout

    return nbstripout.strip_output(notebook, keep_output=False, keep_count=False, keep_id=KEEP_IDS,
                                   extra_keys=EXTRA_KEYS)


def strip_before_save(model: dict, path: str, **_) -> None:
    """jupyter_server's pre_save_hook: a notebook saved in a notebooks/ folder is saved without outputs.

    Args:
        model: the contents model about to be written; its "content" is changed in place.
        path: the API path it is saved to, relative to the server's root.
    """
    if model.get("type") != "notebook" or PurePosixPath(path).parent.name != LECTURE_FOLDER:
        return
    import nbformat

    model["content"] = strip(nbformat.from_dict(model["content"]))
