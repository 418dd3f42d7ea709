"""`invoke reproduce`: a rerun from the manifest is bit-identical, and differences are named."""

import json

import pytest

from classifier.config import UserError, make_config
from classifier.download import import_from
from classifier.commands import train_command
from classifier.reproduce import environment_differences, load_finished_run, reproduce


def test_rerun_of_a_run_is_identical(tiny_dataset, tmp_path, capsys):
    dataset, source = tiny_dataset
    import_from(dataset, tmp_path / "data", source)
    config = make_config(dataset="tiny", trainer="tape", epochs=2, data_dir=str(tmp_path / "data"),
                         runs_dir=str(tmp_path / "runs"))
    original = train_command(config, verbose=0)
    assert reproduce(str(original)) is True
    out = capsys.readouterr().out
    assert "Same environment as recorded" in out and "IDENTICAL" in out
    assert len(list((tmp_path / "runs").iterdir())) == 2


def test_environment_differences_are_listed():
    recorded = {"tensorflow": "2.20.0", "numerics_env": {"TF_ENABLE_ONEDNN_OPTS": None},
                "packages": {"numpy": "2.3.0", "gone": "1.0"}}
    current = {"tensorflow": "2.21.0", "numerics_env": {"TF_ENABLE_ONEDNN_OPTS": "0"},
               "packages": {"numpy": "2.4.6"}}
    lines = environment_differences(recorded, current)
    assert "tensorflow: 2.20.0 -> 2.21.0" in lines
    assert "numerics_env.TF_ENABLE_ONEDNN_OPTS: None -> 0" in lines
    assert "package numpy: 2.3.0 -> 2.4.6" in lines and "package gone: 1.0 -> absent" in lines


def test_unfinished_run_cannot_be_reproduced(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"status": "interrupted"}))
    with pytest.raises(UserError, match="did not finish .* invoke train --resume"):
        load_finished_run(tmp_path)
    with pytest.raises(UserError, match="is not a run folder"):
        load_finished_run(tmp_path / "nothing")
