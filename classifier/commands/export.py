"""Export a finished run's model to run elsewhere, and prove every export on the test set.

    invoke export runs/20261127-150831-fashion_mnist-sequential_add-fit
    invoke export RUN --format onnx
    invoke export RUN --format savedmodel,tflite --int8

Each format is written by its own toolchain and then read back by its own
runtime, never by Keras: the SavedModel's `serving_default` signature through
`tf.saved_model.load`, the `.tflite` file in the LiteRT interpreter
(`ai-edge-litert`), the `.onnx` file in `onnxruntime`. Each must reach the
run's test accuracy (metrics.json) within TOLERANCE on the same test images.
An int8-quantized TFLite (`--int8`) reports its accuracy drop and size
instead.

A `--trainer torch` run (model.pt) exports to ONNX through `torch.onnx.export`,
checked in onnxruntime the same way against the torch model's own accuracy;
SavedModel and TFLite are TensorFlow's formats, so the table names them as
skipped, and asking for them alone is a one-line error. The table (format, file size, accuracy, latency per image on this
CPU) goes to `export.json` and `export.md` in the run folder; the files go to
`RUN/export/`. The converters, runtimes and measurements are
classifier/machinery/exporters.py; this module checks what was asked, calls
them, and turns a missed accuracy into ExportMismatch.
"""

from __future__ import annotations

from pathlib import Path

from classifier.config import UserError, make_config
from classifier.machinery import exporters
from classifier.machinery.exporters import FORMATS, TOLERANCE, TORCH_FORMATS
from classifier.machinery.runs import read_object, read_run_files, resume_hint

EXPORT_DIR = "export"


class ExportMismatch(Exception):
    """An export that runs but does not give the run's test accuracy (exit 1, like a failed reproduce)."""


def parse_formats(value: str) -> tuple[str, ...]:
    """Turn "savedmodel,onnx" into ("savedmodel", "onnx"); an unknown name is a UserError."""
    names = tuple(dict.fromkeys(part.strip().lower() for part in value.split(",") if part.strip()))
    if not names:
        raise UserError(f"--format is empty; accepted: {', '.join(FORMATS)} (comma-separated)")
    for name in names:
        if name not in FORMATS:
            raise UserError(f"unknown format {name!r}; accepted: {', '.join(FORMATS)} (comma-separated)")
    return names


def check_run(run_dir: Path) -> dict:
    """The finished run's config and metrics; a folder that is not a finished run is a UserError."""
    config, manifest = read_run_files(run_dir)
    status = manifest.get("status") if manifest is not None else "unknown (no manifest.json)"
    if status != "complete":
        raise UserError(
            f"run {run_dir} did not finish (status {status}); export a complete run, or {resume_hint(run_dir)}"
        )
    for name in (model_file(config), "metrics.json"):
        if not (run_dir / name).is_file():
            raise UserError(f"run {run_dir} has no {name}; it is not a finished run; {resume_hint(run_dir)}")
    return {"config": config, "metrics": read_object(run_dir / "metrics.json")}


def model_file(config: dict) -> str:
    """The file a run keeps its trained model in: model.pt for a --trainer torch run, else model.keras."""
    return "model.pt" if config.get("trainer") == "torch" else "model.keras"


def torch_formats(run_dir: Path, chosen: tuple[str, ...], int8: bool) -> tuple[tuple[str, ...], dict[str, str]]:
    """The chosen formats a torch run can take, and {skipped format: why}; none at all is a UserError."""
    if int8:
        raise UserError(f"--int8 writes an int8 TFLite, a TensorFlow format; run {run_dir} was trained with "
                        f"--trainer torch, which exports to {', '.join(TORCH_FORMATS)}: invoke export {run_dir} --format onnx")
    kept = tuple(name for name in chosen if name in TORCH_FORMATS)
    if not kept:
        raise UserError(f"--format {','.join(chosen)}: TensorFlow formats; run {run_dir} was trained with --trainer torch, "
                        f"which exports to {', '.join(TORCH_FORMATS)}: invoke export {run_dir} --format onnx")
    reason = f"a TensorFlow format; a torch run exports to {', '.join(TORCH_FORMATS)}"
    return kept, {name: reason for name in chosen if name not in kept}


def export_run(run: str | Path, formats: str = ",".join(FORMATS), int8: bool = False, data_dir: str = "") -> dict:
    """Export RUN's model.keras to each format, run every export on the test set, write the table.

    Args:
        run: a finished run folder.
        formats: comma-separated names from FORMATS.
        int8: also write an int8-quantized TFLite and report its accuracy drop.
        data_dir: the dataset cache (default: the run's, else $CLASSIFIER_DATA_DIR or ./data).

    Returns:
        What export.json holds: the reference accuracy and one row per format.

    Raises:
        UserError: not a finished run, an unknown format, a model a format cannot hold.
        ExportMismatch: an export whose accuracy is off by more than TOLERANCE (the table is still written).
    """
    run_dir = Path(run)
    chosen = parse_formats(formats)
    record = check_run(run_dir)
    torch_run = record["config"].get("trainer") == "torch"
    chosen, skipped = torch_formats(run_dir, chosen, int8) if torch_run else (chosen, {})
    exporters.check_runtimes(chosen, int8, torch_run)
    config = make_config(**{**record["config"], **({"data_dir": data_dir} if data_dir else {})})
    reference = float(record["metrics"]["accuracy"])

    train, test = exporters.train_and_test(config)
    out = run_dir / EXPORT_DIR
    out.mkdir(exist_ok=True)
    if torch_run:
        rows = exporters.torch_rows(run_dir, config, out, test, reference)
    else:
        rows = exporters.keras_rows(run_dir, chosen, int8, out, (train, test), reference)

    for row in rows[1:]:
        row.path = f"{EXPORT_DIR}/{Path(row.path).name}"
    note = random_model_note(record["metrics"])
    result = exporters.write_table(run_dir, reference, rows, len(test), skipped, note)
    off = [row for row in rows if row.within_tolerance is False]
    if off:
        raise ExportMismatch("; ".join(
            [f"{row.format} accuracy {row.accuracy:.4f} differs from metrics.json's {reference:.4f} by more than {TOLERANCE}"
             for row in off] + ([note] if note else [])
        ))
    return result


def random_model_note(metrics: dict) -> str:
    """A sentence for a run whose model is random at evaluation (its two test accuracies differ), else "".

    evaluate_torch calls the model twice on the test set (accuracy, then
    argmax_accuracy); only a model that drops out at evaluation, like the
    lecture's `F.dropout(x)` in torch_lecture, gives two different numbers.
    Its export keeps the dropout (ONNX's Dropout in training mode), so no
    export can match metrics.json within TOLERANCE except by chance.
    """
    first, second = metrics["accuracy"], metrics.get("argmax_accuracy", metrics["accuracy"])
    if abs(first - second) < 1e-6:  # float32 rounding, far below one image in 10,000
        return ""
    return (f"metrics.json's two test accuracies differ ({first:.4f} and {second:.4f}): the model drops out at "
            "evaluation too (the lecture's F.dropout(x), pitfall 2 in classifier/lecture/torch_models.py), so its "
            "accuracy changes from call to call and its exports can match it only by chance; "
            "a corrected build (--model torch_module) exports exactly")
