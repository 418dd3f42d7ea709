"""`invoke export`: each format written by its toolchain, run in its own runtime, checked against metrics.json."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import pytest

from conftest import run_invoke, train_fashion

_RUNTIMES = ("ai_edge_litert", "onnxruntime", "tf2onnx", "onnx")
_missing = [name for name in _RUNTIMES if importlib.util.find_spec(name) is None]
if _missing and os.environ.get("CI") == "true":
    pytest.fail(f"CI must install {', '.join(_missing)} (requirements/lab.lock)", pytrace=False)
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"{', '.join(_missing)} not installed (pip install -r requirements/lab.lock)")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished `fit` run (1 epoch) on a small learnable dataset the test made, registered as 'tiny'."""
    from classifier.commands.train import train_command
    from classifier.config import make_config
    from classifier.machinery.download import import_from
    from conftest import registered, tiny_spec

    root = tmp_path_factory.mktemp("export")
    with registered(tiny_spec(root / "source", num_train=300, num_test=200)) as spec:
        import_from(spec, root / "data", root / "source")
        config = make_config(dataset="tiny", epochs=1, data_dir=str(root / "data"), runs_dir=str(root / "runs"))
        yield train_command(config, verbose=0)


def test_every_format_gives_the_runs_test_accuracy(tiny_run):
    from classifier.commands.export import TOLERANCE, export_run

    result = export_run(tiny_run, int8=True)
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    rows = {row["format"]: row for row in result["rows"]}
    assert list(rows) == ["keras", "savedmodel", "tflite", "onnx", "tflite_int8"]
    assert result["test_images"] == 200
    for name in ("savedmodel", "tflite", "onnx"):
        assert abs(rows[name]["accuracy"] - metrics["accuracy"]) <= TOLERANCE, rows[name]
        assert rows[name]["within_tolerance"] is True and rows[name]["latency_ms"] > 0
    assert rows["savedmodel"]["runtime"].startswith("tf.saved_model")
    assert rows["tflite"]["runtime"].startswith("ai-edge-litert")
    assert rows["onnx"]["runtime"].startswith("onnxruntime")
    # int8 stores a byte per weight where float stores four.
    assert rows["tflite_int8"]["size_bytes"] < rows["tflite"]["size_bytes"] / 3
    assert rows["tflite_int8"]["accuracy_drop"] == pytest.approx(metrics["accuracy"] - rows["tflite_int8"]["accuracy"])
    for row in rows.values():
        assert (tiny_run / row["path"]).exists(), row["path"]
    assert (tiny_run / "export" / "savedmodel" / "saved_model.pb").is_file()
    assert json.loads((tiny_run / "export.json").read_text()) == result
    table = (tiny_run / "export.md").read_text()
    assert table.count("| ok |") == 0 and table.count(" ok |") == 4 and "tflite_int8" in table
    leftovers = [p.name for p in (tiny_run / "export").iterdir() if p.name.startswith(".")]
    leftovers += [p.name for p in tiny_run.iterdir() if p.name.startswith(".")]
    assert not leftovers, "no temporary file may be left"


def test_a_second_export_keeps_the_other_formats_rows(tiny_run):
    from classifier.commands.export import export_run

    export_run(tiny_run, formats="savedmodel,tflite")
    result = export_run(tiny_run, formats="onnx")
    assert {row["format"] for row in result["rows"]} >= {"keras", "savedmodel", "tflite", "onnx"}


def _odd_layer_run(tiny_run, tmp_path):
    """A copy of the run whose model.keras has a layer computing tf.math.igamma, which neither TFLite nor ONNX has."""
    import tensorflow as tf
    from tensorflow import keras

    @keras.utils.register_keras_serializable(package="test_export")
    class Igamma(keras.layers.Layer):
        def call(self, x):
            return tf.math.igamma(x + 1.0, x + 1.0)

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("export", "export.*", "checkpoint"))
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = Igamma(name="odd_igamma")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="dense")(x)
    keras.Model(inputs, outputs).save(run / "model.keras")
    return run


@pytest.mark.parametrize("name", ["tflite", "onnx"])
def test_a_layer_the_format_cannot_hold_is_named(tiny_run, tmp_path, name):
    from classifier.config import UserError
    from classifier.commands.export import export_run

    run = _odd_layer_run(tiny_run, tmp_path)
    with pytest.raises(UserError) as raised:
        export_run(run, formats=name)
    message = str(raised.value)
    assert "layer 'odd_igamma' (Igamma)" in message and "Igamma is not supported" in message, message
    assert "\n" not in message
    assert not (run / "export.json").exists() and not list((run / "export").iterdir())


def test_an_export_that_misses_the_accuracy_is_a_mismatch(tiny_run, tmp_path):
    from classifier.commands.export import ExportMismatch, export_run

    # The SavedModel holds the untrained odd model fine, but it cannot give the run's accuracy.
    run = _odd_layer_run(tiny_run, tmp_path)
    with pytest.raises(ExportMismatch, match="savedmodel accuracy"):
        export_run(run, formats="savedmodel")
    rows = json.loads((run / "export.json").read_text())["rows"]
    assert [row["within_tolerance"] for row in rows] == [True, False]
    assert "MISMATCH" in (run / "export.md").read_text()


def _unfinished(tiny_run, tmp_path, status):
    run = tmp_path / "unfinished"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("export", "export.*"))
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "status": status}))
    return run


@pytest.mark.parametrize("case, expected", [
    ("format", "error: unknown format 'coreml'; accepted: savedmodel, tflite, onnx (comma-separated)"),
    ("running", "did not finish (status running)"),
    ("interrupted", "did not finish (status interrupted)"),
    ("not_a_run", "is not a run folder (no config.json in it)"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_run, tmp_path, case, expected):
    if case == "format":
        args = [str(tiny_run), "--format", "onnx,coreml"]
    elif case == "not_a_run":
        args = [str(tmp_path)]
    else:
        args = [str(_unfinished(tiny_run, tmp_path, case))]
    before = sorted(p.name for p in tiny_run.iterdir())
    result = run_invoke("export", *args, timeout=120)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(p.name for p in tiny_run.iterdir()) == before


@pytest.mark.slow
def test_export_of_a_real_fashion_mnist_run(fashion_lab):
    """The issue's check as a person runs it: train briefly on the real images, export, read the table."""
    run, _ = train_fashion(fashion_lab, "--limit", "600", "--epochs", "1")
    result = run_invoke("export", str(run), "--data-dir", str(fashion_lab / "data"))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    rows = {row["format"]: row for row in json.loads((run / "export.json").read_text())["rows"]}
    for name in ("savedmodel", "tflite", "onnx"):
        assert abs(rows[name]["accuracy"] - metrics["accuracy"]) <= 0.001
    assert "| onnx | onnxruntime" in result.stdout and result.stdout == (run / "export.md").read_text()


@pytest.fixture(scope="module")
def torch_run(fashion_lab):
    """A finished `invoke train --trainer torch --limit 600 --epochs 1` run on the real Fashion-MNIST (model.pt)."""
    from conftest import require_torch

    require_torch()
    run, _ = train_fashion(fashion_lab, "--trainer", "torch", "--limit", "600", "--epochs", "1")
    return run


def test_a_torch_run_exports_to_onnx_checked_against_its_metrics(torch_run, fashion_lab):
    result = run_invoke("export", str(torch_run), "--data-dir", str(fashion_lab / "data"), env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((torch_run / "metrics.json").read_text())
    table = json.loads((torch_run / "export.json").read_text())
    rows = {row["format"]: row for row in table["rows"]}
    assert list(rows) == ["torch", "onnx"]
    assert table["test_images"] == metrics["num_images"]
    assert rows["torch"]["path"] == "model.pt" and rows["torch"]["runtime"].startswith("torch ")
    assert rows["onnx"]["runtime"].startswith("onnxruntime") and rows["onnx"]["path"] == "export/model.onnx"
    assert abs(rows["onnx"]["accuracy"] - metrics["accuracy"]) <= 0.001 and rows["onnx"]["within_tolerance"] is True
    assert rows["onnx"]["size_bytes"] == (torch_run / "export" / "model.onnx").stat().st_size > 0
    # The default formats name the two TensorFlow ones as skipped, with the reason, in the same table.
    assert table["skipped"] == {name: "a TensorFlow format; a torch run exports to onnx" for name in ("savedmodel", "tflite")}
    assert "| savedmodel | skipped: a TensorFlow format; a torch run exports to onnx |" in result.stdout
    assert "| onnx | onnxruntime" in result.stdout and "speed vs torch" in result.stdout
    assert result.stdout == (torch_run / "export.md").read_text()
    assert sorted(p.name for p in (torch_run / "export").iterdir()) == ["model.onnx"]


@pytest.mark.parametrize("args", [("--format", "savedmodel,tflite"), ("--format", "onnx", "--int8")])
def test_tensorflow_formats_of_a_torch_run_are_one_line_naming_onnx(torch_run, args):
    before = sorted(p.name for p in torch_run.iterdir())
    result = run_invoke("export", str(torch_run), *args, timeout=120)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "trained with --trainer torch, which exports to onnx" in result.stderr
    assert result.stderr.strip().endswith(f"invoke export {torch_run} --format onnx")
    assert sorted(p.name for p in torch_run.iterdir()) == before


def test_the_lecture_faithful_torch_model_is_named_as_random_at_evaluation(fashion_lab):
    """torch_lecture drops out at evaluation: metrics.json's two accuracies differ, and the table says why exports differ."""
    from conftest import require_torch

    require_torch()
    run, _ = train_fashion(fashion_lab, "--trainer", "torch", "--model", "torch_lecture", "--limit", "600",
                           "--epochs", "1", "--seed", "3")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["accuracy"] != metrics["argmax_accuracy"]
    result = run_invoke("export", str(run), "--data-dir", str(fashion_lab / "data"), env={"OMP_NUM_THREADS": "1"})
    # Random dropout at evaluation: whether the ONNX accuracy lands within the tolerance is the export's own
    # verdict, which export.json records row by row; the exit code must follow it (1 with any row outside).
    rows = json.loads((run / "export.json").read_text(encoding="utf-8"))["rows"]
    outside = [row["format"] for row in rows if row.get("within_tolerance") is False]
    assert result.returncode == (1 if outside else 0), (outside, result.stderr[-3000:])
    note = f"Note: metrics.json's two test accuracies differ ({metrics['accuracy']:.4f} and {metrics['argmax_accuracy']:.4f})"
    table = (run / "export.md").read_text()
    assert table.splitlines()[1].startswith(note) and "pitfall 2" in table
    if outside:
        assert outside == ["onnx"] and "onnx accuracy" in result.stderr and "--model torch_module" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_full_disk_is_named_not_cut_from_tensorflows_message(tiny_run, small_tmpfs):
    """The run folder on a full tmpfs: TensorFlow's SaveV2 error is about 600 characters; the line says what happened."""
    from classifier.commands.export import export_run
    from classifier.config import UserError

    run = small_tmpfs / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("export", "export.*"))
    before = sorted((path.relative_to(run).as_posix(), path.stat().st_size) for path in run.rglob("*"))
    with open(small_tmpfs / "filler", "wb") as filler:  # all but 64 KB: the SavedModel's variables do not fit
        os.posix_fallocate(filler.fileno(), 0, shutil.disk_usage(small_tmpfs).free - 64 * 1024)
    with pytest.raises(UserError) as raised:
        export_run(run, formats="savedmodel")
    assert str(raised.value) == ("savedmodel export failed: the disk that holds the run folder is full (no space left on "
                                 "device); free space there (old runs/ folders can be moved elsewhere) and export "
                                 "again; nothing of this export was kept")
    (small_tmpfs / "filler").unlink()
    after = sorted((path.relative_to(run).as_posix(), path.stat().st_size) for path in run.rglob("*"))
    assert [entry for entry in after if entry[0] != "export"] == [entry for entry in before if entry[0] != "export"]
    assert not list((run / "export").iterdir())  # no scratch folder left behind
