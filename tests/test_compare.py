"""`invoke compare RUN_A RUN_B`: two finished run folders judged without retraining.

The tiny dataset is trained a few times for the whole module (module_runs);
each test judges those folders or copies of them that it changes.
"""

import json
import shlex
import shutil
from pathlib import Path

import pytest

from classifier.commands.train import train_command
from classifier.config import make_config
from classifier.machinery.download import import_from
from classifier.machinery.runs import files_record
from conftest import notebook_run_of, registered, run_invoke, tiny_spec, train_fashion


def _verdict(result) -> str:
    """The last line of `invoke compare`'s output: the verdict."""
    return result.stdout.strip().splitlines()[-1]


def _evidence(result, name: str) -> list[str]:
    """The evidence line of `name` (framework, settings, data, machine, software) and its indented differences."""
    lines = result.stdout.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith(f"{name:9} "))
    rest = lines[start + 1:]
    end = next((index for index, line in enumerate(rest) if not line.startswith("  ")), len(rest))
    return [lines[start], *rest[:end]]


@pytest.fixture(scope="module")
def tiny_lab(tmp_path_factory):
    """The tiny dataset registered for this module and imported into 'lab folder/data' (a space in the path)."""
    root = tmp_path_factory.mktemp("compare") / "lab folder"
    with registered(tiny_spec(root / "source")) as spec:
        import_from(spec, root / "data", root / "source")
        yield root


def _train(lab, **overrides):
    config = make_config(**{"dataset": "tiny", "trainer": "tape", "epochs": 1, "data_dir": str(lab / "data"),
                            "runs_dir": str(lab / "runs"), **overrides})
    return train_command(config, verbose=0)


@pytest.fixture(scope="module")
def module_runs(tiny_lab):
    """The module's trainings, each once: {"reference", "again" (the same settings), "seed" (seed 7)}."""
    return {"reference": _train(tiny_lab), "again": _train(tiny_lab), "seed": _train(tiny_lab, seed=7)}


def _copy(run_dir, tmp_path, name: str):
    copy = tmp_path / name
    shutil.copytree(run_dir, copy)
    return copy


def _edit(run_dir, edit_manifest=None, edit_metrics=None, reseal: bool = True) -> None:
    """Change a run's manifest or metrics; `reseal` records the files' new SHA-256, as a run that wrote them would."""
    for name, edit in (("manifest.json", edit_manifest), ("metrics.json", edit_metrics)):
        if edit:
            record = json.loads((run_dir / name).read_text(encoding="utf-8"))
            edit(record)
            (run_dir / name).write_text(json.dumps(record), encoding="utf-8")
    if reseal:
        manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
        manifest["files_sha256"] = files_record(run_dir)
        (run_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def test_the_same_training_twice_is_identical(module_runs):
    first, second = module_runs["reference"], module_runs["again"]
    result = run_invoke("compare", str(first), str(second))
    assert result.returncode == 0, result.stderr
    assert _verdict(result) == f"IDENTICAL: {first} vs {second}"
    for name in ("framework", "settings", "data", "machine", "software"):
        assert _evidence(result, name) == [f"{name:9} the same"]
    assert "note:" not in result.stdout  # both runs' files verified against their manifests


def test_another_seed_is_different_settings(module_runs):
    first, second = module_runs["reference"], module_runs["seed"]
    result = run_invoke("compare", str(first), str(second))
    assert result.returncode == 1, result.stderr
    assert _verdict(result) == f"DIFFERENT: other settings: {first} vs {second}"
    assert _evidence(result, "settings") == ["settings  other settings: the runs trained something else",
                                             "  seed: 42 -> 7"]
    assert "weights_sha256" in result.stdout and result.stdout.count("  NO") >= 1


def test_tensorboard_and_where_files_lie_are_not_settings(module_runs, tiny_lab, tmp_path):
    """config.py: --tensorboard only writes event files, --runs-dir and --data-dir say where files lie."""
    moved = tmp_path / "other data"
    shutil.copytree(tiny_lab / "data", moved)
    without = _train(tiny_lab, tensorboard=False, runs_dir=str(tmp_path / "other runs"), data_dir=str(moved))
    assert not (without / "tensorboard").exists()
    reference = module_runs["reference"]
    result = run_invoke("compare", str(reference), str(without))
    assert (result.returncode, _verdict(result)) == (0, f"IDENTICAL: {reference} vs {without}"), result.stdout
    assert _evidence(result, "settings") == ["settings  the same"]


def test_other_data_is_named(module_runs, tiny_lab, tmp_path):
    first = module_runs["reference"]
    second = _copy(_train(tiny_lab, limit=300), tmp_path, "limit 300")
    _edit(second, edit_manifest=lambda manifest: manifest["data"]["sha256"].update({"extra.gz": "ab" * 32}))
    result = run_invoke("compare", str(first), str(second))
    assert result.returncode == 1
    assert _verdict(result) == f"DIFFERENT: other settings, other data: {first} vs {second}"
    assert _evidence(result, "data") == ["data      other data: the runs trained on other files",
                                         "  train: 480 -> 240", "  validation: 120 -> 60",
                                         "  extra.gz: sha256 absent -> abababababab..."]


def test_another_kind_of_machine_is_judged_within_the_tolerance(module_runs, tmp_path):
    """A run whose manifest says it ran on a CPU with another L1 cache, with other weights and a slightly other loss."""
    reference = module_runs["reference"]
    other = _copy(reference, tmp_path, "other-machine")

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


def test_other_weights_on_the_same_machine_are_different(module_runs, tmp_path):
    reference = module_runs["reference"]
    copy = _copy(reference, tmp_path, "copy")
    _edit(copy, lambda manifest: manifest.update(weights_sha256="0" * 64))
    result = run_invoke("compare", str(reference), str(copy), "--tolerance", "1")
    assert result.returncode == 1
    assert _verdict(result) == ("DIFFERENT: other weights from the same settings, data, machine and software: "
                                f"{reference} vs {copy}")


@pytest.mark.parametrize("name, change", [
    ("metrics.json", lambda path: path.write_text(
        json.dumps({**json.loads(path.read_text(encoding="utf-8")), "loss": 0.01}), encoding="utf-8")),
    ("model.keras", lambda path: path.write_bytes(path.read_bytes() + b"\0")),
    ("model.keras", lambda path: path.unlink()),
])
def test_a_file_changed_after_the_run_is_one_line(module_runs, tmp_path, name, change):
    """The weights file and metrics.json are hashed and checked against the manifest, not trusted."""
    reference = module_runs["reference"]
    altered = _copy(reference, tmp_path, "altered run")
    change(altered / name)
    for first, second in ((reference, altered), (altered, reference)):
        result = run_invoke("compare", str(first), str(second))
        assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith(f"error: {altered / name} ")
        assert "the run folder was altered; put back the file the run wrote, or train it again" in result.stderr


def test_edited_metrics_of_an_older_run_are_other_metrics_not_other_weights(module_runs, tmp_path):
    """A run from before the manifest recorded its files' hashes: the same weights, edited metrics."""
    reference = module_runs["reference"]
    older = _copy(reference, tmp_path, "older")
    _edit(older, lambda manifest: manifest.pop("files_sha256"),
          lambda metrics: metrics.update(loss=metrics["loss"] + 0.25), reseal=False)
    result = run_invoke("compare", str(reference), str(older), "--tolerance", "1")
    assert result.returncode == 1
    assert f"note: {older}'s manifest records no SHA-256 of its files" in result.stdout
    assert _verdict(result) == ("DIFFERENT: other test metrics from the same weights, settings, data, machine and "
                                f"software (largest difference 0.25): {reference} vs {older}")
    assert "other weights" not in result.stdout


def test_the_same_folder_twice_is_one_line(module_runs):
    reference = module_runs["reference"]
    for second in (reference, reference.parent / ".." / reference.parent.name / reference.name):
        result = run_invoke("compare", str(reference), str(second))
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.strip() == (f"error: {reference} and {second} are the same run folder, so there is "
                                         "nothing to compare; give another run folder, or retrain this one and "
                                         f"compare: invoke reproduce {shlex.quote(str(reference))}")
    assert "'" in result.stderr  # the lab folder's name holds a space: the hint pastes as one argument


def test_a_notebooks_run_is_the_run_of_the_command_it_names(module_runs, tiny_lab, monkeypatch):
    """lab.record_run of the model the command trained: the same settings, data and weights, either way round."""
    command = module_runs["reference"]
    notebook = notebook_run_of(command, tiny_lab, monkeypatch)
    for first, second in ((command, notebook), (notebook, command)):
        result = run_invoke("compare", str(first), str(second))
        assert (result.returncode, _verdict(result)) == (0, f"IDENTICAL: {first} vs {second}"), result.stdout
        for name in ("framework", "settings", "data", "machine", "software"):
            assert _evidence(result, name) == [f"{name:9} the same"], result.stdout


def test_a_torch_run_beside_a_keras_run_is_another_framework(module_runs, tiny_lab, torch_on_one_thread):
    """The same machine: the verdict names the framework and the settings, never the machine."""
    torch_run = _train(tiny_lab, trainer="torch")
    keras_run = module_runs["reference"]
    result = run_invoke("compare", str(keras_run), str(torch_run))
    assert result.returncode == 1, result.stderr
    assert _verdict(result) == f"DIFFERENT: other framework, other settings: {keras_run} vs {torch_run}"
    assert _evidence(result, "framework") == ["framework other framework: the runs trained with other libraries",
                                              "  TensorFlow (tape) -> PyTorch (torch)"]
    assert _evidence(result, "machine") == ["machine   the same"]
    assert _evidence(result, "software") == ["software  the same"]


@pytest.fixture
def torch_on_one_thread():
    """torch on one intra-op thread (conftest.torch_on_one_thread); skipped where PyTorch is not installed."""
    from conftest import require_torch

    torch = require_torch()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _write(folder, manifest: str | None, metrics: str | None = None):
    folder.mkdir()
    for name, text in (("manifest.json", manifest), ("metrics.json", metrics)):
        if text is not None:
            (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.mark.parametrize("make, message", [
    (lambda root: root / "nothing", "does not exist or is not a folder"),
    (lambda root: _write(root / "empty", None), "is not a run folder (no manifest.json in it)"),
    (lambda root: _write(root / "stopped run", '{"status": "interrupted"}'),
     # No config.json: --resume would refuse it, so the hint says so rather than suggest it.
     "did not finish (status 'interrupted'); it cannot be resumed: --resume "),
    (lambda root: _write(root / "cut", '{"status": "comp'), "manifest.json is damaged (not JSON"),
    (lambda root: _write(root / "cut-metrics", '{"status": "complete"}', '{"loss": 1.'),
     "metrics.json is damaged (not JSON"),
    (lambda root: _write(root / "list", '[1, 2]'), "manifest.json is damaged (not the JSON object the lab writes)"),
    (lambda root: _write(root / "hashless", '{"status": "complete", "config": {}, "data": {}}',
                         '{"loss": 1.0, "accuracy": 0.5, "argmax_accuracy": 0.5}'),
     "is damaged: manifest.json's weights_sha256 is missing"),
    (lambda root: _write(root / "modelless", '{"status": "complete", "config": {}, "data": {}, "weights_sha256": "a"}',
                         '{"loss": 1.0, "accuracy": 0.5, "argmax_accuracy": 0.5}'),
     "is damaged: it holds no model.keras or model.pt; train it again"),
])
def test_a_bad_folder_is_one_line_and_exit_2(tmp_path, make, message):
    bad = make(tmp_path)
    result = run_invoke("compare", str(bad), str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {bad}") and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    if "finish it with" in message:  # the hint pastes into a shell: the folder's name holds a space
        assert result.stderr.strip().endswith(f"--resume {shlex.quote(str(bad))}")


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


def _zip(run_dir, tmp_path, name: str, nested: str = ""):
    """A zip of the run folder as Colab's file browser makes it (the folder at its top), or as Google Drive does
    (`nested`: the run folder inside a folder of that name)."""
    root = tmp_path / f"{name} source"
    shutil.copytree(run_dir, root / nested / run_dir.name)
    return shutil.make_archive(str(tmp_path / "submissions" / name), "zip", root_dir=root)


def _table(result) -> dict[str, list[str]]:
    """{run: [verdict, largest metric difference, what differs]} from the class table's rows."""
    rows = [line.strip().strip("|").split("|") for line in result.stdout.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [cell.strip() for cell in cells[1:]] for cells in rows[1:]}


def test_a_class_of_folders_and_zips_is_one_table(module_runs, tmp_path):
    """Colab's and Drive's zips, a run folder, a damaged, a foreign and an unsafe zip: one row each, nothing left."""
    import zipfile

    reference, again, seed = module_runs["reference"], module_runs["again"], module_runs["seed"]
    submissions = tmp_path / "submissions"
    submissions.mkdir()
    _zip(again, tmp_path, "alice")
    _zip(seed, tmp_path, "bob", nested="My Drive")
    shutil.copytree(again, submissions / "carol")
    (submissions / "damaged.zip").write_bytes(Path(_zip(again, tmp_path, "whole")).read_bytes()[:2000])
    (submissions / "whole.zip").unlink()
    with zipfile.ZipFile(submissions / "foreign.zip", "w") as archive:
        archive.writestr("homework/answers.txt", "42")
    with zipfile.ZipFile(submissions / "unsafe.zip", "w") as archive:
        archive.writestr("../escaped.txt", "out")
    with zipfile.ZipFile(submissions / "twins.zip", "w") as archive:
        for run in (again, seed):
            for path in run.rglob("*"):
                archive.write(path, f"runs/{path.relative_to(run.parent)}")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = run_invoke("compare", str(reference), str(submissions), env={"TMPDIR": str(scratch)})
    assert result.returncode == 2, result.stderr
    table = _table(result)
    assert list(table) == ["alice.zip", "bob.zip", "carol", "damaged.zip", "foreign.zip", "twins.zip",
                           "unsafe.zip"]
    assert table["alice.zip"] == ["IDENTICAL", "0", "nothing"]
    assert table["carol"] == ["IDENTICAL", "0", "nothing"]
    assert table["bob.zip"][0] == "DIFFERENT" and table["bob.zip"][2] == "settings (seed: 42 -> 7)"
    assert float(table["bob.zip"][1]) > 0
    assert [table[name][:2] for name in ("damaged.zip", "foreign.zip", "twins.zip", "unsafe.zip")] \
        == [["REFUSED", ""]] * 4
    assert table["damaged.zip"][2].startswith(f"{submissions / 'damaged.zip'} is not a readable zip")
    assert table["foreign.zip"][2] == (f"{submissions / 'foreign.zip'} holds no run folder (no manifest.json); "
                                       "zip one run folder (runs/<run name>) and hand that in")
    assert table["unsafe.zip"][2].startswith(f"{submissions / 'unsafe.zip'} holds '../escaped.txt', a path "
                                             "outside the zip's folder")
    assert table["twins.zip"][2].startswith(f"{submissions / 'twins.zip'} holds 2 run folders; zip one run folder")
    assert result.stdout.strip().splitlines()[-1] == ("2 of 7 run(s) IDENTICAL or WITHIN TOLERANCE (tolerance 0.02), "
                                                      "1 DIFFERENT, 4 refused")
    assert list(scratch.iterdir()) == [] and not (tmp_path / "escaped.txt").exists()
    assert "Traceback" not in result.stderr


def test_the_exit_code_says_whether_every_run_agrees(module_runs, tmp_path):
    """--more adds runs to the table: 0 while every run agrees, 1 once one is DIFFERENT."""
    reference, again, seed = module_runs["reference"], module_runs["again"], module_runs["seed"]
    (tmp_path / "submissions").mkdir()
    alice = _zip(again, tmp_path, "alice")
    result = run_invoke("compare", str(reference), alice, "--more", str(again))
    assert result.returncode == 0, result.stdout
    assert _table(result) == {"alice.zip": ["IDENTICAL", "0", "nothing"], again.name: ["IDENTICAL", "0", "nothing"]}
    result = run_invoke("compare", str(reference), alice, "--more", str(seed), "--more", str(tmp_path / "gone.zip"))
    assert result.returncode == 2
    assert _table(result)["gone.zip"] == ["REFUSED", "", f"{tmp_path / 'gone.zip'} does not exist or is not a "
                                                         "folder; give a run folder, e.g. runs/<run name>"]
    result = run_invoke("compare", str(reference), alice, "--more", str(seed))
    assert result.returncode == 1 and _table(result)[seed.name][0] == "DIFFERENT"


def test_a_git_state_git_could_not_read_is_no_software_difference():
    """A run whose `git` call failed (no repository, or too slow) records None: unknown, not another commit."""
    from classifier.machinery.judge import environment_differences

    known, other = {"commit": "a" * 40, "dirty": False}, {"commit": "b" * 40, "dirty": False}
    unknown = {"commit": None, "dirty": None}
    assert environment_differences({"git": known}, {"git": unknown}, keys=("git",), packages=False) == []
    assert environment_differences({"git": known}, {"git": other}, keys=("git",), packages=False) == [
        f"git.commit: {'a' * 40} -> {'b' * 40}"]
