"""`invoke reproduce`: a rerun from the manifest is bit-identical, and differences are named."""

import json
import os
import shlex

import pytest
from conftest import notebook_run_of

from classifier.machinery import numerics
from classifier.config import UserError, make_config
from classifier.machinery.download import import_from
from classifier.machinery.runs import files_record
from classifier.commands.train import train_command
from classifier.machinery.judge import environment_differences, load_finished_run
from classifier.commands.reproduce import reproduce


def test_rerun_of_a_run_is_identical(tiny_dataset, tmp_path, capsys):
    dataset, source = tiny_dataset
    import_from(dataset, tmp_path / "data", source)
    config = make_config(dataset="tiny", trainer="tape", epochs=2, data_dir=str(tmp_path / "data"),
                         runs_dir=str(tmp_path / "runs"))
    original = train_command(config, verbose=0)
    assert reproduce(str(original)) is True
    out = capsys.readouterr().out
    assert "Same environment and kind of machine as recorded: the rerun should be bit-identical." in out
    assert "not promised" not in out and "IDENTICAL" in out
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
    (tmp_path / "config.json").write_text(json.dumps({"epochs": 3}))  # a run folder has both files from its start
    (tmp_path / "manifest.json").write_text(json.dumps({"status": "interrupted", "config": {"epochs": 3}}))
    with pytest.raises(UserError, match="did not finish .* invoke train --resume"):
        load_finished_run(tmp_path)
    with pytest.raises(UserError, match="does not exist or is not a folder"):
        load_finished_run(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is not a run folder"):
        load_finished_run(tmp_path / "empty")


def _finished_tiny_run(tiny_dataset, tmp_path):
    dataset, source = tiny_dataset
    import_from(dataset, tmp_path / "data", source)
    config = make_config(dataset="tiny", trainer="tape", epochs=1, data_dir=str(tmp_path / "data"),
                         runs_dir=str(tmp_path / "runs"))
    return train_command(config, verbose=0)


def _edit_run(run_dir, machine: dict, loss_shift: float) -> None:
    """Make the run look as if it came from another machine with slightly other numbers."""
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    manifest["numerics"]["machine"] = {**manifest["numerics"]["machine"], **machine}
    manifest["weights_sha256"] = "0" * 64
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    metrics["loss"] += loss_shift
    (run_dir / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    # The files' SHA-256 as that machine's run would have recorded them (compare checks them).
    manifest["files_sha256"] = files_record(run_dir)
    (run_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def test_the_manifest_records_the_numerics_mode(tiny_dataset, tmp_path):
    run_dir = _finished_tiny_run(tiny_dataset, tmp_path)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config"]["numerics"] == "fastest"
    assert manifest["numerics"]["mode"] == "fastest" and manifest["numerics"]["applied"] == {}
    # What this process runs on, known without the lab's reader: the architecture and the CPUs it may use.
    machine = manifest["numerics"]["machine"]
    assert (machine["architecture"], machine["cpus"]) == (os.uname().machine, len(os.sched_getaffinity(0)))
    assert set(manifest["environment"]["numerics_env"]) == set(numerics.RECORDED)


def test_another_kind_of_machine_is_compared_within_the_tolerance(tiny_dataset, tmp_path, capsys):
    run_dir = _finished_tiny_run(tiny_dataset, tmp_path)
    _edit_run(run_dir, {"l1d_kib": 4096}, loss_shift=0.005)
    assert reproduce(str(run_dir), tolerance=0.01) is True
    out = capsys.readouterr().out
    # One expectation, before the rerun: not "should be bit-identical" and "not promised" both.
    assert ("Not the run's environment and kind of machine under numerics fastest: bit-identical weights are "
            "not promised; the metrics must agree within 0.01. What differs:\n  machine: l1d_kib: 4096 ->") in out
    assert "should be bit-identical" not in out
    assert "WITHIN TOLERANCE: largest metric difference 0.005" in out
    assert reproduce(str(run_dir), tolerance=0.001) is False
    assert "DIFFERENT: largest metric difference 0.005" in capsys.readouterr().out


def test_the_same_kind_of_machine_must_give_the_same_bits(tiny_dataset, tmp_path, capsys):
    run_dir = _finished_tiny_run(tiny_dataset, tmp_path)
    _edit_run(run_dir, {}, loss_shift=0.0)  # only the hash differs now
    assert reproduce(str(run_dir), tolerance=1.0) is False
    out = capsys.readouterr().out
    assert "Same environment and kind of machine as recorded" in out and "not promised" not in out
    assert "DIFFERENT: other weights from the same settings, data, machine and software" in out


def test_a_notebooks_run_is_rerun_as_the_command_it_names(tiny_dataset, tmp_path, monkeypatch, capsys):
    """lab.record_run of a model trained as `invoke train` trains it: the rerun is that command, bit for bit."""
    command = _finished_tiny_run(tiny_dataset, tmp_path)
    notebook = notebook_run_of(command, tmp_path, monkeypatch)
    capsys.readouterr()
    assert reproduce(str(notebook)) is True
    out = capsys.readouterr().out
    assert "Same environment and kind of machine as recorded: the rerun should be bit-identical." in out
    rerun = max((tmp_path / "notebook runs").iterdir(), key=lambda path: path.stat().st_mtime)
    assert rerun != notebook and out.strip().splitlines()[-1] == f"IDENTICAL: {notebook} vs {rerun}"
    # The hint pastes into a shell as two arguments: the runs folder's name holds a space.
    assert f"invoke compare {shlex.quote(str(notebook))} {shlex.quote(str(rerun))}" in out and "'" in out
    # A run folder changed since it finished is refused before anything is retrained.
    (notebook / "metrics.json").write_text('{"loss": 0.0}', encoding="utf-8")
    with pytest.raises(UserError, match="metrics.json is not the file the run wrote .* the run folder was altered"):
        reproduce(str(notebook))
    assert len(list((tmp_path / "notebook runs").iterdir())) == 2


@pytest.mark.parametrize("architecture", ["x86_64", "aarch64"])
def test_a_notebooks_mode_is_read_from_the_variables_it_recorded(architecture, monkeypatch):
    """lab.record_run writes the config's default mode; the variables lab.use_numerics() set say which one ran."""
    from classifier.machinery.judge import recorded_mode

    monkeypatch.setattr(numerics.platform, "machine", lambda: architecture)
    for mode in ("portable", "fastest"):
        variables = numerics.apply(mode, environ={"TF_NUM_INTRAOP_THREADS": "16"}, announce=print)["environment"]
        notebook = {"source": "notebook", "config": {"numerics": "fastest"}, "environment": {"numerics_env": variables}}
        assert recorded_mode(notebook) == mode
    command = {"config": {"numerics": "fastest"}, "numerics": {"mode": "portable"}}
    assert recorded_mode(command) == "portable"


def test_a_negative_tolerance_is_refused(tiny_dataset, tmp_path):
    with pytest.raises(UserError, match="--tolerance must be 0 or more, got -1"):
        reproduce(str(tmp_path), tolerance=-1)
