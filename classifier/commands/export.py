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
`RUN/export/`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from classifier import config as config_module
from classifier.config import UserError, make_config
from classifier.lecture.split import prepare
from classifier.machinery.datasets import get_dataset
from classifier.machinery.loading import read_verified
from classifier.machinery.files import read_json, write_json, write_text
from classifier.machinery.runs import read_object, read_run_files, resume_hint

FORMATS = ("savedmodel", "tflite", "onnx")
TORCH_FORMATS = ("onnx",)  # what a --trainer torch run exports to
TOLERANCE = 0.001  # largest accepted |export accuracy - metrics.json accuracy|
EXPORT_DIR = "export"
_FILE_NAMES = {"savedmodel": "savedmodel", "tflite": "model.tflite", "tflite_int8": "model_int8.tflite", "onnx": "model.onnx"}
_BATCH = 256  # images per call when measuring accuracy; does not change the numbers
_LATENCY_IMAGES = 200  # single-image calls timed per format (after _WARMUP calls)
_WARMUP = 20
_REPRESENTATIVE_IMAGES = 200  # training images that calibrate the int8 ranges


class ExportMismatch(Exception):
    """An export that runs but does not give the run's test accuracy (exit 1, like a failed reproduce)."""


@dataclass
class Row:
    format: str  # "keras" or "torch" (the reference), "savedmodel", "tflite", "tflite_int8", "onnx"
    runtime: str  # what ran it
    path: str  # relative to the run folder
    size_bytes: int
    accuracy: float
    accuracy_drop: float  # metrics.json accuracy minus this accuracy
    latency_ms: float  # median milliseconds for one image (batch of 1) on this CPU
    within_tolerance: bool | None  # None for int8, which is expected to lose a little


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


def _check_runtimes(formats, int8: bool, torch_run: bool = False) -> None:
    """Name the missing package before any work starts."""
    needed = {"tflite": "ai_edge_litert", "onnx": "onnxruntime"}
    modules = [needed[name] for name in formats if name in needed]
    if "onnx" in formats:
        # Keras converts with tf2onnx; torch.onnx.export needs only the onnx package.
        modules += ["onnx"] if torch_run else ["tf2onnx", "onnx"]
    if int8 and "ai_edge_litert" not in modules:
        modules.append("ai_edge_litert")
    import importlib.util

    missing = [module for module in modules if importlib.util.find_spec(module) is None]
    if missing:
        raise UserError(f"{', '.join(missing)} not installed: pip install --require-hashes -r requirements/lab.lock")


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
    _check_runtimes(chosen, int8, torch_run)
    config = make_config(**{**record["config"], **({"data_dir": data_dir} if data_dir else {})})
    reference = float(record["metrics"]["accuracy"])

    train, test = _test_split(config)
    out = run_dir / EXPORT_DIR
    out.mkdir(exist_ok=True)
    if torch_run:
        rows = _torch_rows(run_dir, config, out, test, reference)
    else:
        rows = _keras_rows(run_dir, chosen, int8, out, (train, test), reference)

    for row in rows[1:]:
        row.path = f"{EXPORT_DIR}/{Path(row.path).name}"
    note = random_model_note(record["metrics"])
    result = _write_table(run_dir, reference, rows, len(test), skipped, note)
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


def _keras_rows(run_dir: Path, chosen, int8: bool, out: Path, splits, reference: float) -> list[Row]:
    """The Keras model as the reference row, then one row per chosen format."""
    # Imported here: bad input is reported without loading TensorFlow.
    import tensorflow as tf
    from tensorflow import keras

    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    keras_call = tf.function(lambda images: model(images, training=False))
    rows = [Row("keras", f"keras {keras.__version__}", "model.keras", (run_dir / "model.keras").stat().st_size,
                reference, 0.0, _latency_ms(lambda x: keras_call(x).numpy(), splits[1].images), True)]
    return rows + _export_formats(model, chosen, int8, out, splits, reference)


def _torch_rows(run_dir: Path, config, out: Path, test, reference: float) -> list[Row]:
    """The torch model (model.pt) as the reference row, then its ONNX export run in onnxruntime."""
    import onnxruntime

    from classifier.lecture.torch_train import to_tensors
    from classifier.machinery.torch_runs import export_torch_onnx, import_torch, load_torch_model

    torch = import_torch()
    dataset = get_dataset(config.dataset)
    model = load_torch_model(run_dir, config.model, dataset.image_shape, len(dataset.class_names))
    # The torch model and its ONNX file take what training fed it: channels first, in [-1, 1].
    test = replace(test, images=to_tensors(test)[0].numpy())

    def torch_predict(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(images)).numpy()

    rows = [Row("torch", f"torch {torch.__version__}", "model.pt", (run_dir / "model.pt").stat().st_size,
                reference, 0.0, _latency_ms(torch_predict, test.images), True)]
    with tempfile.TemporaryDirectory(dir=out, prefix=".tmp-") as scratch:
        path = Path(scratch) / _FILE_NAMES["onnx"]
        try:
            with _native_stderr_captured(), warnings.catch_warnings():
                # The TorchScript exporter warns that it is deprecated (export_torch_onnx says why it is used).
                warnings.simplefilter("ignore")
                export_torch_onnx(model, path, test.images[:1])
                predict = _onnx_runtime(path)
        except Exception as error:  # the exporter raises many types; each ends here as one line
            raise UserError(f"onnx export of {config.model} failed: {_short(error)}") from None
        rows.append(_measure("onnx", f"onnxruntime {onnxruntime.__version__}", predict, path, test, reference))
        _publish(path, out / _FILE_NAMES["onnx"])
    return rows


def _export_formats(model, chosen, int8: bool, out: Path, splits, reference: float) -> list[Row]:
    """Convert `model` to each chosen format in a scratch folder, measure each in its runtime, publish it in `out`."""
    import tensorflow as tf

    train, test = splits
    rows = []
    with tempfile.TemporaryDirectory(dir=out, prefix=".tmp-") as scratch:
        saved_model = Path(scratch) / "savedmodel"
        if {"savedmodel", "tflite"} & set(chosen) or int8:
            _convert(model, "savedmodel", lambda: _export_saved_model(model, saved_model))
        for name in chosen:
            if name == "savedmodel":
                predict = _saved_model_runtime(saved_model)
                rows.append(_measure(name, f"tf.saved_model {tf.__version__}", predict, saved_model, test, reference))
            elif name == "tflite":
                path = Path(scratch) / _FILE_NAMES[name]
                _convert(model, name, lambda: path.write_bytes(_tflite_bytes(saved_model)))
                rows.append(_measure(name, _litert_version(), _tflite_runtime(path), path, test, reference))
                _publish(path, out / _FILE_NAMES[name])
            elif name == "onnx":
                path = Path(scratch) / _FILE_NAMES[name]
                _convert(model, name, lambda: _export_onnx(model, path))
                import onnxruntime

                rows.append(_measure(name, f"onnxruntime {onnxruntime.__version__}", _onnx_runtime(path), path, test, reference))
                _publish(path, out / _FILE_NAMES[name])
        if int8:
            path = Path(scratch) / _FILE_NAMES["tflite_int8"]
            representative = train.images[:_REPRESENTATIVE_IMAGES]
            _convert(model, "tflite_int8", lambda: path.write_bytes(_tflite_bytes(saved_model, representative)))
            row = _measure("tflite_int8", _litert_version(), _tflite_runtime(path), path, test, reference)
            row.within_tolerance = None
            rows.append(row)
            _publish(path, out / _FILE_NAMES["tflite_int8"])
        # Last: the TFLite conversions above read it from the scratch folder.
        if "savedmodel" in chosen:
            _publish(saved_model, out / _FILE_NAMES["savedmodel"])
    return rows


def _test_split(config):
    """The run's training and test images, loaded as training loaded them."""
    arrays, _ = read_verified(get_dataset(config.dataset), config_module.data_dir(config), download=False)
    train, _, test = prepare(arrays, limit=config.limit, val_split=config.val_split)
    return train, test


# Converting: each format's own toolchain.


def _export_saved_model(model, path: Path) -> None:
    model.export(str(path), format="tf_saved_model", verbose=False)


def _export_onnx(model, path: Path) -> None:
    # Keras 3 converts with tf2onnx on the TensorFlow backend. tf2onnx does not
    # fail on an op it cannot translate (it logs it and writes the TensorFlow
    # op into the graph), so the file only counts once onnxruntime loads it.
    model.export(str(path), format="onnx", verbose=False)
    _onnx_runtime(path)


def _tflite_bytes(saved_model: Path, representative: np.ndarray | None = None) -> bytes:
    """The SavedModel converted to a TFLite flatbuffer; int8 weights and activations with `representative`."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if representative is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in representative)
        # Every op in int8, so a missing int8 kernel fails here rather than falling back to float.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def _convert(model, name: str, action) -> None:
    """Run one conversion; if it fails, find the layer the format cannot hold and say so."""
    try:
        with _native_stderr_captured():
            action()
    except Exception as error:  # the converters raise many types; each ends here as one line
        layer, reason = _first_unconvertible_layer(model, name)
        if layer is None:
            raise UserError(f"{name} export failed: {_short(error)}") from None
        raise UserError(f"{name} cannot hold layer {layer.name!r} ({type(layer).__name__}): {reason}") from None


def _first_unconvertible_layer(model, name: str):
    """Convert each layer alone, in order; the first that fails is the one the format cannot hold."""
    from tensorflow import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or isinstance(layer.input, (list, tuple)):
            continue
        inputs = keras.Input(shape=tuple(layer.input.shape[1:]), dtype=layer.input.dtype)
        single = keras.Model(inputs, layer(inputs))
        with tempfile.TemporaryDirectory(prefix="classifier-probe-") as folder:
            saved_model = Path(folder) / "savedmodel"
            try:
                with _native_stderr_captured():
                    _export_saved_model(single, saved_model)
                    if name == "savedmodel":
                        _saved_model_runtime(saved_model)
                    elif name.startswith("tflite"):
                        _tflite_bytes(saved_model)
                    else:
                        _export_onnx(single, Path(folder) / "layer.onnx")
            except Exception as error:
                return layer, _short(error)
    return None, ""


def _short(error: BaseException) -> str:
    """One line from a converter's many: the op it could not translate, when it says."""
    text = str(error)
    for pattern in (r"'tf\.(\w+)' op is neither a custom op nor a flex op", r"No Op registered for (\w+)",
                    r"Unsupported ops: Counter\(\{'(\w+)'"):
        if match := re.search(pattern, text):
            return f"op {match.group(1)} is not supported"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return first[:200]


@contextlib.contextmanager
def _native_stderr_captured():
    """Keep the converters' C++ and logging chatter (on both streams) off the terminal; a failure is one line."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = {stream: os.dup(stream) for stream in (1, 2)}
    with tempfile.TemporaryFile() as sink:
        for stream in saved:
            os.dup2(sink.fileno(), stream)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for stream, original in saved.items():
                os.dup2(original, stream)
                os.close(original)


# Running: each format in its own runtime.


def _saved_model_runtime(path: Path):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures["serving_default"]
    (input_name,) = signature.structured_input_signature[1].keys()
    (output_name,) = signature.structured_outputs.keys()
    return lambda images: signature(**{input_name: tf.constant(images)})[output_name].numpy()


def _tflite_runtime(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    (source,) = interpreter.get_input_details()
    (target,) = interpreter.get_output_details()
    # The first run creates the XNNPACK delegate, which LiteRT announces on the terminal.
    with _native_stderr_captured():
        interpreter.allocate_tensors()
        interpreter.invoke()
    shape = [tuple(source["shape"])]

    def predict(images: np.ndarray) -> np.ndarray:
        # The interpreter has fixed shapes: resize only when the batch size changes.
        if shape[0] != images.shape:
            interpreter.resize_tensor_input(source["index"], images.shape)
            interpreter.allocate_tensors()
            shape[0] = images.shape
        interpreter.set_tensor(source["index"], images.astype(np.float32))
        interpreter.invoke()
        return interpreter.get_tensor(target["index"]).copy()

    return predict


def _onnx_runtime(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (source,) = session.get_inputs()
    return lambda images: session.run(None, {source.name: images.astype(np.float32)})[0]


def _litert_version() -> str:
    from importlib import metadata

    return f"ai-edge-litert {metadata.version('ai-edge-litert')}"


def _measure(name: str, runtime: str, predict, path: Path, test, reference: float) -> Row:
    """Accuracy on every test image and the median single-image latency of one export."""
    predicted = np.concatenate([
        np.argmax(predict(test.images[start : start + _BATCH]), axis=1) for start in range(0, len(test), _BATCH)
    ])
    accuracy = float(np.mean(predicted == test.labels))
    return Row(name, runtime, str(path), _size(path), accuracy, reference - accuracy,
               _latency_ms(predict, test.images), abs(accuracy - reference) <= TOLERANCE)


def _latency_ms(predict, images: np.ndarray) -> float:
    """Median milliseconds for one image (batch of 1), after a warm-up."""
    count = min(len(images), _LATENCY_IMAGES + _WARMUP)
    times = []
    for index in range(count):
        image = images[index : index + 1]
        start = time.perf_counter()
        predict(image)
        if index >= min(_WARMUP, count - 1):
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    return path.stat().st_size


def _publish(source: Path, target: Path) -> None:
    """Move a finished, verified export to its final name (a folder too, replacing an older one)."""
    if source.is_dir():
        old = target.with_name(f".old-{target.name}")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, target)


# The table.


def _write_table(run_dir: Path, reference: float, rows: list[Row], num_images: int, skipped: dict[str, str],
                 note: str) -> dict:
    """export.json and export.md, keeping rows of earlier exports of formats not redone now.

    `skipped`: {format: why} for formats the run cannot take; `note`: random_model_note's sentence or "".
    """
    json_path = run_dir / "export.json"
    earlier = read_json(json_path).get("rows", []) if json_path.is_file() else []
    now = {row.format for row in rows}
    merged = [row for row in earlier if row["format"] not in now] + [asdict(row) for row in rows]
    order = ["keras", "torch", *FORMATS, "tflite_int8"]
    merged.sort(key=lambda row: order.index(row["format"]))
    result = {"reference": "metrics.json accuracy", "reference_accuracy": reference, "tolerance": TOLERANCE,
              "test_images": num_images, "cpu": _cpu(), "rows": merged, "skipped": skipped,
              "note": note}
    write_json(json_path, result)
    write_text(run_dir / "export.md", markdown_table(result))
    return result


def markdown_table(result: dict) -> str:
    """The export table as Markdown: one row per format, the run's own model (Keras or torch) first as the reference."""
    reference = next((row for row in result["rows"] if row["format"] in ("keras", "torch")), None)
    lines = [
        f"Test accuracy in metrics.json: {result['reference_accuracy']:.4f}; every export must match it within "
        f"{result['tolerance']} (int8 reports its drop). Latency: median of {_LATENCY_IMAGES} single-image calls on {result['cpu']}.",
        *([f"Note: {result['note']}."] if result.get("note") else []),
        "",
        f"| format | runtime | file | size | accuracy | vs metrics.json | latency ms/image | speed vs {reference['format'] if reference else 'keras'} |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    base = reference["latency_ms"] if reference else None
    for row in result["rows"]:
        verdict = {True: "ok", False: "MISMATCH", None: "int8"}[row["within_tolerance"]]
        ratio = f"{base / row['latency_ms']:.2f}x" if base else ""
        lines.append(
            f"| {row['format']} | {row['runtime']} | `{row['path']}` | {_human(row['size_bytes'])} | {row['accuracy']:.4f} | "
            f"{round(row['accuracy'] - result['reference_accuracy'], 4) + 0.0:+.4f} {verdict} | {row['latency_ms']:.3f} | {ratio} |"
        )
    for name, why in result.get("skipped", {}).items():
        lines.append(f"| {name} | skipped: {why} | | | | | | |")
    return "\n".join(lines) + "\n"


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def _cpu() -> str:
    from classifier.machinery.runs import cpu_model

    return f"{cpu_model()} ({os.cpu_count()} cores)"
