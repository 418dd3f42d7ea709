"""`invoke compare RUN_A RUN_B`: two finished run folders judged without retraining."""

import json
import shutil

import pytest

from classifier.commands.train import train_command
from classifier.config import make_config
from classifier.machinery.download import import_from
from conftest import run_invoke, train_fashion


def _verdict(result) -> str:
    """The last line of `invoke compare`'s output: the verdict."""
    return result.stdout.strip().splitlines()[-1]


def _evidence(result, name: str) -> list[str]:
    """The evidence line of `name` (settings, data, machine, software) and its indented differences."""
    lines = result.stdout.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith(f"{name:9} "))
    rest = lines[start + 1:]
    end = next((index for index, line in enumerate(rest) if not line.startswith("  ")), len(rest))
    return [lines[start], *rest[:end]]


@pytest.fixture
def tiny_runs(tiny_dataset, tmp_path):
    """A function training the tiny dataset in this process with config overrides; returns the run folder."""
    dataset, source = tiny_dataset
    import_from(dataset, tmp_path / "data", source)

    def train(**overrides):
        config = make_config(dataset="tiny", trainer="tape", epochs=1, data_dir=str(tmp_path / "data"),
                             runs_dir=str(tmp_path / "runs"), **overrides)
        return train_command(config, verbose=0)

    return train


def _edit(run_dir, edit_manifest=None, edit_metrics=None) -> None:
    for name, edit in (("manifest.json", edit_manifest), ("metrics.json", edit_metrics)):
        if edit:
            record = json.loads((run_dir / name).read_text())
            edit(record)
            (run_dir / name).write_text(json.dumps(record))


def test_the_same_training_twice_is_identical(tiny_runs):
    first, second = tiny_runs(), tiny_runs()
    result = run_invoke("compare", str(first), str(second))
    assert result.returncode == 0, result.stderr
    assert _verdict(result) == f"IDENTICAL: {first} vs {second}"
    for name in ("settings", "data", "machine", "software"):
        assert _evidence(result, name) == [f"{name:9} the same"]


def test_another_seed_is_different_settings(tiny_runs):
    first, second = tiny_runs(seed=1), tiny_runs(seed=2)
    result = run_invoke("compare", str(first), str(second))
    assert result.returncode == 1, result.stderr
    assert _verdict(result) == f"DIFFERENT: other settings: {first} vs {second}"
    assert _evidence(result, "settings") == ["settings  other settings: the runs trained something else",
                                             "  seed: 1 -> 2"]
    assert "weights_sha256" in result.stdout and result.stdout.count("  NO") >= 1


def test_other_data_is_named(tiny_runs):
    first, second = tiny_runs(), tiny_runs(limit=300)
    _edit(second, edit_manifest=lambda manifest: manifest["data"]["sha256"].update({"extra.gz": "ab" * 32}))
    result = run_invoke("compare", str(first), str(second))
    assert result.returncode == 1
    assert _verdict(result) == f"DIFFERENT: other settings, other data: {first} vs {second}"
    assert _evidence(result, "data") == ["data      other data: the runs trained on other files",
                                         "  train: 480 -> 240", "  validation: 120 -> 60",
                                         "  extra.gz: sha256 absent -> abababababab..."]


def test_another_kind_of_machine_is_judged_within_the_tolerance(tiny_runs, tmp_path):
    """A run whose manifest says it ran on a CPU with another L1 cache, with other weights and a slightly other loss."""
    reference = tiny_runs()
    other = tmp_path / "other-machine"
    shutil.copytree(reference, other)

    def other_machine(manifest):
        manifest["numerics"]["machine"]["l1d_kib"] = 4096
        manifest["weights_sha256"] = "0" * 64

    _edit(other, other_machine, lambda metrics: metrics.update(loss=metrics["loss"] + 0.005))
    result = run_invoke("compare", str(reference), str(other), "--tolerance", "0.01")
    assert result.returncode == 0, result.stderr
    assert _verdict(result).startswith("WITHIN TOLERANCE: largest metric difference 0.005")
    assert _verdict(result).endswith(f"<= 0.01 (other machine): {reference} vs {other}")
    assert _evidence(result, "machine")[1].startswith("  l1d_kib: ") and "-> 4096" in result.stdout
    result = run_invoke("compare", str(reference), str(other), "--tolerance", "0.001")
    assert result.returncode == 1
    assert _verdict(result).startswith("DIFFERENT: largest metric difference 0.005")


def test_other_weights_on_the_same_machine_are_different(tiny_runs, tmp_path):
    reference = tiny_runs()
    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    _edit(copy, lambda manifest: manifest.update(weights_sha256="0" * 64))
    result = run_invoke("compare", str(reference), str(copy), "--tolerance", "1")
    assert result.returncode == 1
    assert _verdict(result) == ("DIFFERENT: other weights from the same settings, data, machine and software: "
                                f"{reference} vs {copy}")


def _write(folder, manifest: str | None, metrics: str | None = None):
    folder.mkdir()
    for name, text in (("manifest.json", manifest), ("metrics.json", metrics)):
        if text is not None:
            (folder / name).write_text(text)
    return folder


@pytest.mark.parametrize("make, message", [
    (lambda root: root / "nothing", "does not exist or is not a folder"),
    (lambda root: _write(root / "empty", None), "is not a run folder (no manifest.json in it)"),
    (lambda root: _write(root / "stopped", '{"status": "interrupted"}'),
     "did not finish (status 'interrupted'); finish it with: invoke train --resume"),
    (lambda root: _write(root / "cut", '{"status": "comp'), "manifest.json is damaged (not JSON"),
    (lambda root: _write(root / "cut-metrics", '{"status": "complete"}', '{"loss": 1.'),
     "metrics.json is damaged (not JSON"),
    (lambda root: _write(root / "list", '[1, 2]'), "manifest.json is damaged (not the JSON object the lab writes)"),
    (lambda root: _write(root / "hashless", '{"status": "complete", "config": {}, "data": {}}',
                         '{"loss": 1.0, "accuracy": 0.5, "argmax_accuracy": 0.5}'),
     "is damaged: manifest.json's weights_sha256 is missing"),
])
def test_a_bad_folder_is_one_line_and_exit_2(tmp_path, make, message):
    bad = make(tmp_path)
    result = run_invoke("compare", str(bad), str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {bad}") and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


def test_a_bad_tolerance_is_refused(tmp_path):
    for value, message in (("x", "--tolerance must be a number, got 'x'"),
                           ("-1", "--tolerance must be 0 or more, got -1.0")):
        result = run_invoke("compare", str(tmp_path), str(tmp_path), "--tolerance", value)
        assert result.returncode == 2 and result.stderr.strip() == f"error: {message}"


@pytest.mark.slow
def test_the_lecturers_workflow_on_real_data(fashion_lab):
    """The README's workflow: a reference run with --numerics portable, the same command again, then other runs."""
    command = ("--limit", "600", "--epochs", "1", "--numerics", "portable")
    reference, _ = train_fashion(fashion_lab, *command)
    student, _ = train_fashion(fashion_lab, *command)
    result = run_invoke("compare", str(reference), str(student))
    assert (result.returncode, _verdict(result)) == (0, f"IDENTICAL: {reference} vs {student}"), result.stdout

    other_seed, _ = train_fashion(fashion_lab, *command, "--seed", "43")
    result = run_invoke("compare", str(reference), str(other_seed))
    assert (result.returncode, _verdict(result)) == (1, f"DIFFERENT: other settings: {reference} vs {other_seed}")
    assert _evidence(result, "settings")[1:] == ["  seed: 42 -> 43"]

    # A machine that caps oneDNN at AVX kernels, trained under "fastest": other bits, close metrics.
    avx_run, _ = train_fashion(fashion_lab, "--limit", "600", "--epochs", "1", "--numerics", "fastest",
                               env={"ONEDNN_MAX_CPU_ISA": "AVX"})
    result = run_invoke("compare", str(reference), str(avx_run))
    assert result.returncode == 0, result.stdout
    assert _verdict(result).startswith("WITHIN TOLERANCE: largest metric difference ")
    assert "(other machine): " in _verdict(result)
    machine = _evidence(result, "machine")
    assert "  numerics: portable -> fastest" in machine and "  numerics_env.ONEDNN_MAX_CPU_ISA: AVX2 -> AVX" in machine
