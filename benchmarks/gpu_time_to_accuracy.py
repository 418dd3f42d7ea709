"""Time to accuracy on a GPU: the fast recipe in Keras on JAX, and the lab's PyTorch trainer.

The lent GPU machine has PyTorch and JAX but no TensorFlow (its wheels are
too large to carry there). So the fast recipe runs in Keras 3 on JAX, with
the layers, schedule, loss and test-time mirroring of classifier/machinery/recipes.py
written here with Keras' own API (tests/test_gpu_time_to_accuracy.py checks
that this network is the lab's `fast_cnn`, layer by layer), and the PyTorch
half runs through the lab's own `TorchTrainer`. Both read real Fashion-MNIST
through the lab's loader, so the splits are those of `invoke train`.

    invoke data --dataset fashion_mnist --from /usr/share/datasets/fashion-mnist --data-dir .gpu/data
    python3 benchmarks/gpu_time_to_accuracy.py --data-dir .gpu/data --output benchmarks/results/gpu_time_to_accuracy

Subjects (each seed in its own process, as in `invoke bench --target`):

    keras-jax fast       the fast recipe as the lab runs it on a GPU: fast_cnn, mixed bfloat16,
                         batch 128, Adam warm-up + cosine to 0.003, its epochs (16), labels smoothed
                         by 0.1, mirroring in training and at test time
    keras-jax wide       what a GPU can afford: the same recipe on a network with twice the
                         channels and two batch-normalized convolutions per stage, 15 epochs
    torch lecture        the lab's PyTorch trainer (`invoke train --trainer torch`): the
                         lecture's network and recipe (RMSprop 0.001, batch 32), 8 epochs at most

Time counts training and validation, epoch by epoch, the first epoch's
compilation included; the test after each epoch is not counted. A run stops
at its last epoch (the fast recipes' schedules end with their epochs), so a
time to 94% is read off the same curve as the time to 91%.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from classifier.registry import HYP  # noqa: E402  (after the path fix above; plain data)

TARGETS = (0.91, 0.93, 0.94)
SUBJECTS = ("keras-jax fast", "keras-jax wide", "torch lecture")

# The fast recipe's settings (classifier/registry.py HYP["fast"], plain data: no TensorFlow imported);
# the wide network keeps them and trains longer, on larger batches.
FAST = {**HYP["fast"]["config"], "label_smoothing": HYP["fast"]["label_smoothing"]}
WIDE = {**FAST, "batch_size": 256, "epochs": 15}
TORCH_MAX_EPOCHS = 8


def fast_cnn(keras, input_shape, num_class: int, widths=(32, 64), dense: int = 256, double: bool = False):
    """classifier.machinery.recipes.fast_cnn in Keras 3 (widths, dense and double=False give exactly it).

    `double` puts two batch-normalized convolutions in each stage (the wide
    network); the lab's network normalizes only after the second convolution.
    """
    layers = keras.layers
    input_tensor = layers.Input(shape=input_shape)
    x = layers.RandomFlip("horizontal", name="mirror")(input_tensor)
    if double:
        for stage, width in enumerate(widths, 1):
            for part in "ab":
                x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{stage}{part}")(x)
                x = layers.BatchNormalization(momentum=0.9, name=f"norm{stage}{part}")(x)
                x = layers.Activation("relu", name=f"relu{stage}{part}")(x)
            x = layers.MaxPool2D(pool_size=(2, 2), name=f"pooling{stage}")(x)
    else:
        x = layers.Conv2D(filters=widths[0], kernel_size=3, padding="same", activation="relu", name="conv1")(x)
        x = layers.MaxPool2D(pool_size=(2, 2), name="pooling1")(x)
        x = layers.Conv2D(filters=widths[1], kernel_size=3, padding="same", use_bias=False, name="conv2")(x)
        x = layers.BatchNormalization(momentum=0.9, name="norm2")(x)
        x = layers.Activation("relu", name="relu2")(x)
        x = layers.MaxPool2D(pool_size=(2, 2), name="pooling2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(units=dense, activation="relu", name="dense1")(x)
    x = layers.Dropout(0.4, name="dropout")(x)
    output_tensor = layers.Dense(units=num_class, activation="softmax", dtype="float32", name="dense2")(x)
    return keras.Model(inputs=input_tensor, outputs=output_tensor, name="fast-classifier")


def load_splits(data_dir: str, val_split: float, seed: int, limit: int | None = None):
    """Real Fashion-MNIST through the lab's loader: the splits `invoke train` uses."""
    from classifier.machinery.loading import load_dataset
    from classifier.config import make_config

    config = make_config(dataset="fashion_mnist", data_dir=data_dir, val_split=val_split, seed=seed, limit=limit)
    _, splits, _ = load_dataset(config)
    return splits


def mirrored_accuracy(model, images, labels, batch_size: int = 1024) -> float:
    """Test accuracy of the mean answer for each image and its mirror image (recipes.inference_model)."""
    import numpy as np

    probabilities = model.predict(images, batch_size=batch_size, verbose=0)
    probabilities = probabilities + model.predict(images[:, :, ::-1, :], batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))


def train_keras(subject: str, data_dir: str, seed: int, limit_epochs: int | None, limit: int | None = None) -> dict:
    """One seed of a Keras subject on whatever backend Keras runs (JAX on the GPU machine)."""
    import keras
    import numpy as np

    settings = FAST if subject == "keras-jax fast" else WIDE
    epochs = limit_epochs or settings["epochs"]
    train, val, test = load_splits(data_dir, settings["val_split"], seed, limit)
    keras.utils.set_random_seed(seed)
    on_gpu = keras.backend.backend() == "jax" and any(d.platform == "gpu" for d in __import__("jax").devices())
    # The lab computes the fast recipe in bfloat16 on a GPU (recipes.use_mixed_precision), float32 on a CPU.
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if on_gpu else "float32")
    if subject == "keras-jax fast":
        model = fast_cnn(keras, train.images.shape[1:], 10)
    else:
        model = fast_cnn(keras, train.images.shape[1:], 10, widths=(64, 128), dense=512, double=True)
    steps = -(-len(train.images) // settings["batch_size"])
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, warmup_target=settings["learning_rate"], warmup_steps=steps,
        decay_steps=max(1, steps * (epochs - 1)))
    # CategoricalCrossentropy with smoothing on one-hot labels is recipes.SmoothedSparseCrossentropy.
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=settings["label_smoothing"]),
                  metrics=["accuracy"])
    one_hot = np.eye(10, dtype="float32")
    seconds, accuracy = [], []
    for epoch in range(epochs):
        start = time.perf_counter()
        # fit returns once the epoch's numbers are on the host, so the clock sees the work done.
        model.fit(train.images, one_hot[train.labels], batch_size=settings["batch_size"], epochs=epoch + 1,
                  initial_epoch=epoch, validation_data=(val.images, one_hot[val.labels]), verbose=0)
        seconds.append((seconds[-1] if seconds else 0.0) + time.perf_counter() - start)
        accuracy.append(mirrored_accuracy(model, test.images, test.labels))
        print(f"[gpu] {subject} seed {seed}: epoch {epoch + 1}, {seconds[-1]:.1f} s, test {accuracy[-1]:.4f}",
              file=sys.stderr, flush=True)
    return {"subject": subject, "seed": seed, "train_images": len(train.images), "batch_size": settings["batch_size"],
            "policy": keras.mixed_precision.global_policy().name, "parameters": model.count_params(),
            "train_seconds": seconds, "test_accuracy": accuracy}


def train_torch(data_dir: str, seed: int, limit_epochs: int | None, limit: int | None = None) -> dict:
    """One seed of the lab's PyTorch trainer, testing after every epoch."""
    from classifier.config import make_config
    from classifier.lecture.torch_models import build_torch_model
    from classifier.lecture.torch_train import TorchTrainer, evaluate_torch, seed_torch

    config = make_config(dataset="fashion_mnist", trainer="torch", data_dir=data_dir, seed=seed,
                         epochs=limit_epochs or TORCH_MAX_EPOCHS, limit=limit)
    seed_torch(config.seed, config.deterministic)
    train, val, test = load_splits(data_dir, config.val_split, seed, limit)
    model = build_torch_model(config.model, train.images.shape[1:], 10)
    trainer = TorchTrainer(model, config, verbose=False)
    accuracy = []

    def test_after_epoch(epoch, trainer):
        accuracy.append(evaluate_torch(trainer.model, test, 10, config.eval_batch_size)["accuracy"])
        print(f"[gpu] torch lecture seed {seed}: epoch {epoch + 1}, {sum(trainer.epoch_seconds):.1f} s, "
              f"test {accuracy[-1]:.4f}", file=sys.stderr, flush=True)

    trainer.train(train, val, on_epoch_end=test_after_epoch)
    seconds = [sum(trainer.epoch_seconds[:i + 1]) for i in range(len(trainer.epoch_seconds))]
    return {"subject": "torch lecture", "seed": seed, "train_images": len(train.images),
            "batch_size": config.batch_size, "device": str(trainer.device), "model": config.model,
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_seconds": seconds, "test_accuracy": accuracy}


def summarise(runs: list[dict]) -> dict:
    """Per subject and target: seeds that reached it, mean and spread of the seconds (and epochs) to it,
    the best accuracy's mean, and images/s over the epochs after the first (compiling) one."""
    summary = {}
    for subject in dict.fromkeys(run["subject"] for run in runs):
        mine = [run for run in runs if run["subject"] == subject]
        later = [b - a for run in mine for a, b in zip(run["train_seconds"], run["train_seconds"][1:])]
        first = [run["train_seconds"][0] for run in mine]
        entry = {"seeds": len(mine), "best_accuracy_mean": statistics.mean(max(r["test_accuracy"]) for r in mine),
                 "final_accuracy_mean": statistics.mean(r["test_accuracy"][-1] for r in mine),
                 "first_epoch_seconds": statistics.mean(first),
                 "epoch_seconds": statistics.median(later) if later else None,
                 "images_per_second": mine[0]["train_images"] / statistics.median(later) if later else None}
        for target in TARGETS:
            reached = [(epoch, run["train_seconds"][epoch - 1]) for run in mine
                       if (epoch := next((i for i, a in enumerate(run["test_accuracy"], 1) if a >= target), None))]
            times = [seconds for _, seconds in reached]
            entry[f"{target}"] = {
                "reached": len(reached),
                "seconds_mean": statistics.mean(times) if times else None,
                "seconds_stdev": statistics.stdev(times) if len(times) > 1 else 0.0 if times else None,
                "epochs_mean": statistics.mean(e for e, _ in reached) if reached else None}
        summary[subject] = entry
    return summary


def markdown(results: dict) -> str:
    """The tables for benchmarks/results and the closing note."""
    def number(value, fmt):
        return "-" if value is None else fmt.format(value)

    lines = [f"# GPU time to accuracy ({results['device']})", "",
             "| subject | seeds | " + " | ".join(f"s to {t:.0%} (reached)" for t in TARGETS)
             + " | best test acc. (mean) | first epoch s | s/epoch after | train images/s |",
             "|---|---:|" + "---:|" * len(TARGETS) + "---:|---:|---:|---:|"]
    for subject, entry in results["summary"].items():
        cells = [f"{number(entry[f'{t}']['seconds_mean'], '{:.1f}')} ± {number(entry[f'{t}']['seconds_stdev'], '{:.1f}')}"
                 f" ({entry[f'{t}']['reached']}/{entry['seeds']})" for t in TARGETS]
        lines.append(f"| {subject} | {entry['seeds']} | " + " | ".join(cells)
                     + f" | {entry['best_accuracy_mean']:.4f} | {entry['first_epoch_seconds']:.1f}"
                     f" | {number(entry['epoch_seconds'], '{:.2f}')} | {number(entry['images_per_second'], '{:,.0f}')} |")
    return "\n".join(lines) + "\n"


def device_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    except ImportError:
        return "CPU"


def versions() -> dict:
    from importlib import metadata

    found = {}
    for name in ("keras", "jax", "jaxlib", "torch", "numpy"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def collect(runs: list[dict], skipped: list[str], start: float) -> dict:
    """Everything a results file holds: the machine, the runs, what the budget skipped, the summary."""
    return {"device": device_name(), "versions": versions(), "targets": TARGETS, "runs": runs, "skipped": skipped,
            "summary": summarise(runs), "wall_seconds": time.perf_counter() - start}


def write_results(output: Path, results: dict) -> None:
    """results as JSON and its tables as Markdown, beside each other."""
    output.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    output.with_suffix(".md").write_text(markdown(results))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="the lab's data folder holding verified Fashion-MNIST")
    parser.add_argument("--output", default="benchmarks/results/gpu_time_to_accuracy",
                        help="results path without extension (.json and .md are written)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=42)
    parser.add_argument("--subjects", default=",".join(SUBJECTS), help=f"comma-separated from {SUBJECTS}")
    parser.add_argument("--epochs", type=int, default=None, help="cap every subject's epochs (a smoke run)")
    parser.add_argument("--limit", type=int, default=None, help="train on this many images (a smoke run)")
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds after which no further seed starts (what has finished is kept)")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="summarise the runs of earlier results files (device calls cut off by their time) into --output")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run = (train_torch(args.data_dir, args.seed, args.epochs, args.limit) if args.child == "torch lecture"
               else train_keras(args.child, args.data_dir, args.seed, args.epochs, args.limit))
        print("RESULT " + json.dumps(run), flush=True)
        return
    if args.merge:
        parts = [json.loads(Path(path).read_text()) for path in args.merge]
        runs = [run for part in parts for run in part["runs"]]
        results = {"device": parts[0]["device"], "versions": parts[0]["versions"], "targets": TARGETS, "runs": runs,
                   "skipped": [], "summary": summarise(runs), "merged_from": [str(path) for path in args.merge]}
        write_results(Path(args.output), results)
        print(markdown(results))
        return
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()]
    unknown = [s for s in subjects if s not in SUBJECTS]
    if unknown:
        parser.exit(2, f"unknown subject(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(SUBJECTS)}\n")
    start, runs, skipped = time.perf_counter(), [], []
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    for seed in range(args.first_seed, args.first_seed + args.seeds):  # seeds outer: a cut-off run still has every subject
        for subject in subjects:
            if time.perf_counter() - start > args.budget:
                skipped.append(f"{subject} seed {seed}")
                continue
            command = [sys.executable, __file__, "--child", subject, "--seed", str(seed), "--data-dir", args.data_dir]
            for flag, value in (("--epochs", args.epochs), ("--limit", args.limit)):
                command += [flag, str(value)] if value else []
            environment = {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "jax"),
                           "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
            completed = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=ROOT,
                                       check=False)
            progress = [line for line in completed.stderr.splitlines() if line.startswith("[gpu]")]
            sys.stderr.write("\n".join(progress) + "\n" + (completed.stderr[-3000:] if completed.returncode else ""))
            lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
            if completed.returncode or not lines:
                print(f"{subject} seed {seed} failed (exit {completed.returncode})", file=sys.stderr)
                continue
            runs.append(json.loads(lines[-1][len("RESULT "):]))
            print(f"{subject} seed {seed}: best test accuracy {max(runs[-1]['test_accuracy']):.4f}, "
                  f"{runs[-1]['train_seconds'][-1]:.1f} s", flush=True)
            # Written after every seed, so a run cut off by its time limit keeps what it measured.
            write_results(output, collect(runs, skipped, start))
    results = collect(runs, skipped, start)
    write_results(output, results)
    print(markdown(results))


if __name__ == "__main__":
    main()
