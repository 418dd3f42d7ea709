"""classifier.lab's check of the notebooks' NOTEBOOK_* settings, run as the notebooks' own opening cells run it
(the Colab cell, which does nothing here, then the settings cell)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("0[2-4]_*.ipynb"))


def _opening_cells(notebook) -> str:
    """The code cells up to and including the first that reads the NOTEBOOK_* settings, in order."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    opening = []
    for source in ("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"):
        opening.append(source)
        if "NOTEBOOK_LIMIT" in source:
            return "\n".join(opening)
    raise AssertionError(f"{notebook.name} has no cell that reads the NOTEBOOK_* settings")


def _run_settings_cell(notebook, **settings) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **settings}
    return subprocess.run([sys.executable, "-c", _opening_cells(notebook)], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
@pytest.mark.parametrize("settings, expected", [
    ({"NOTEBOOK_LIMIT": "-5"}, "classifier.config.UserError: NOTEBOOK_LIMIT='-5' cannot be used: give 0 (all training "
                               "images) or a number of images, e.g. NOTEBOOK_LIMIT=600, or unset it for the default"),
    ({"NOTEBOOK_EPOCHS": "0"}, "classifier.config.UserError: NOTEBOOK_EPOCHS='0' cannot be used: give a number of "
                               "epochs, at least 1, e.g. NOTEBOOK_EPOCHS=1, or unset it for the default"),
    ({"NOTEBOOK_DATASET": "imagenet"}, "classifier.config.UserError: NOTEBOOK_DATASET='imagenet' is not a dataset the "
                                       "lab knows; accepted: cifar10, cifar100, mnist, fashion_mnist"),
])
def test_a_bad_notebook_setting_stops_the_settings_cell_naming_it(notebook, settings, expected):
    result = _run_settings_cell(notebook, **settings)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == expected


def test_good_notebook_settings_pass_the_settings_cell():
    # The control: the sizes the tests use (and 0, all images) are accepted.
    result = _run_settings_cell(NOTEBOOKS[0], NOTEBOOK_LIMIT="0", NOTEBOOK_EPOCHS="1", NOTEBOOK_DATASET="mnist")
    assert result.returncode == 0, result.stderr


def test_load_data_refuses_a_negative_limit():
    from classifier import lab
    from classifier.config import UserError

    with pytest.raises(UserError, match="limit must be None or 0 .* got -5"):
        lab.load_data("fashion_mnist", limit=-5)
