"""Measuring trainers, each in its own child process: the lecture's script, the lab's trainers, the recipes.

`invoke bench` (classifier/commands/bench.py) calls `measure_subjects` or
`measure_recipes`; each measurement is one fresh Python process on the same
Fashion-MNIST files, so that one's tracing, caches and memory never reach
another. The parent samples the child's resident memory with psutil, the
same way for the lecture's script and the lab's trainers and on any system.
A child of the lab is told what to measure by a JSON spec:

    python -m classifier.machinery.measure SPEC.json
    # SPEC.json: {"measure": "lab", "arguments": {"trainer_name": "tape", "limit": 500, "epochs": 2,
    #             "data_dir": "data", "seed": 42}, "output": "result.json"}
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from classifier.config import PROJECT_ROOT, UserError, make_config, resolve_recipe
from classifier.machinery import numerics
from classifier.machinery.platforms import installed_version
from classifier.machinery.bench_stats import row_name
from classifier.machinery.files import read_json, write_json

REFERENCE_SCRIPT = PROJECT_ROOT / "benchmarks" / "lecture_reference.py"
SUBJECTS = ("reference", "fit", "tape", "fast", "torch", "fit+tensorboard", "tape+tensorboard")
# "fast" is the fast recipe (classifier/machinery/recipes.py) with the `tape` trainer, as the README runs it;
# "+tensorboard": the same trainer writing `invoke train`'s per-epoch TensorBoard summaries, to show their cost.
SAMPLE_SECONDS = 0.05  # how often the parent reads a child's resident memory


def measure_subjects(subjects, numerics_modes, repeats: int, limit: int, epochs: int, data_root: str,
                     seed: int) -> dict[str, list[dict]]:
    """{row name: one measurement per repeat}, measured interleaved (reference, fit, tape, reference, ...)
    so that a slow spell of the machine falls on every subject and mode rather than on one.

    Rows are named by `bench_stats.row_name`: the subject, with " [MODE]" where several modes are measured.
    """
    rows = {(subject, mode): row_name(subject, mode, numerics_modes) for subject in subjects for mode in numerics_modes}
    measurements: dict[str, list[dict]] = {row: [] for row in rows.values()}
    for repeat in range(repeats):
        for (subject, mode), row in rows.items():
            print(f"[bench] repeat {repeat + 1}/{repeats}: {row}", flush=True)
            measurements[row].append(measure_subject(subject, limit, epochs, data_root, seed, mode))
    return measurements


def measure_subject(subject: str, limit: int, epochs: int, data_root: str, seed: int,
                    numerics_mode: str = "fastest") -> dict:
    """One measurement of `subject` (one of SUBJECTS) in a fresh Python process under `numerics_mode`.

    Returns:
        What the child measured (the keys of `measure_lab_trainer`), with "peak_rss_mib" as the parent saw it.
    """
    # The child gets the mode's settings in its environment before it starts,
    # which works alike for the lecture's script and the lab's trainers.
    environment = dict(os.environ)
    numerics.apply(numerics_mode, environment, announce=lambda line: print(f"[bench] {line}"))
    common = {"limit": limit, "epochs": epochs, "data_dir": data_root, "seed": seed}
    trainer, _, extra = subject.partition("+")
    if subject == "reference":
        # The lecture's script keeps its own command line, as a student would run it.
        flags = [item for key, value in common.items() for item in (f"--{key.replace('_', '-')}", str(value))]
        return run_child([sys.executable, str(REFERENCE_SCRIPT), *flags], f"benchmark of {subject}", environment)
    if subject == "torch":
        return run_spec("torch", common, f"benchmark of {subject}", environment)
    trainer_name, recipe = ("tape", "fast") if trainer == "fast" else (trainer, "lecture")
    arguments = {**common, "trainer_name": trainer_name, "recipe": recipe, "tensorboard": extra == "tensorboard"}
    return run_spec("lab", arguments, f"benchmark of {subject}", environment)


def measure_recipes(plans: dict[str, tuple], seeds: int, limit: int, max_epochs: int,
                    data_root: str) -> dict[str, list[dict]]:
    """{row label: one run per seed}, seeds interleaved, each run a child process.

    Args:
        plans: row label -> (recipe, the accuracy its runs stop at or None, its epochs or None), from `plan`.
    """
    measurements: dict[str, list[dict]] = {label: [] for label in plans}
    for seed in range(seeds):
        for label, (recipe, stop, epochs) in plans.items():
            print(f"[bench] seed {seed + 1}/{seeds}: recipe {label}, "
                  + (f"until {stop}" if stop else "all its epochs"), flush=True)
            arguments = {"recipe": recipe, "target": stop, "limit": limit, "max_epochs": max_epochs,
                         "data_dir": data_root, "seed": seed, "epochs": epochs}
            run = run_spec("recipe", arguments, f"time to accuracy of {recipe}", dict(os.environ))
            run.pop("peak_rss_mib")  # memory is not what this benchmark compares
            measurements[label].append(run)
    return measurements


def plan(recipe: str, epochs: int | None, numbers: tuple[float, ...], lecture: bool) -> tuple:
    """(recipe, the accuracy its runs stop at or None, its epochs or None for the usual choice)."""
    if lecture and recipe == "lecture":
        # The lecture target is this recipe's final accuracy after its own epochs, so it trains
        # exactly those, to the end: no early stop, no --epochs extension.
        own, _ = resolve_recipe(make_config(dataset="fashion_mnist", recipe=recipe), frozenset({"dataset", "recipe"}))
        return recipe, None, epochs or own.epochs
    # The lecture target is known only when every lecture run has finished, so only a numeric one can stop a run.
    return recipe, numbers[-1] if numbers else None, epochs


def run_spec(measure: str, arguments: dict, what: str, environment: dict) -> dict:
    """`python -m classifier.machinery.measure` on a spec {"measure", "arguments", "output"}; see run_child."""
    with tempfile.TemporaryDirectory(prefix="bench-spec-") as folder:
        spec = Path(folder) / "spec.json"
        write_json(spec, {"measure": measure, "arguments": arguments})
        return run_child([sys.executable, "-m", "classifier.machinery.measure", str(spec)], what, environment)


def run_child(command: list[str], what: str, environment: dict) -> dict:
    """Run `command --json RESULT` in the project and return RESULT, with the child's peak resident memory.

    The parent reads the child's resident set every SAMPLE_SECONDS through psutil (on any system;
    `resource`'s ru_maxrss is Unix-only). Each measured phase (loading, building, every epoch, the
    evaluations) lasts seconds, so the sampled peak is the plateau a phase holds.

    Args:
        command: the child's command line; "--json PATH" is added.
        what: how an error names the measurement, e.g. "benchmark of fit".
        environment: the child's environment.

    Returns:
        The JSON the child wrote, with "peak_rss_mib".

    Raises:
        UserError: naming `what`, the exit status and the child's last line of stderr.
    """
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        result_path = Path(folder) / "result.json"
        child = subprocess.Popen([*command, "--json", str(result_path)], cwd=PROJECT_ROOT, env=environment,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                                 errors="replace")
        peak, stderr = _watch(child)
        if child.returncode != 0 or not result_path.exists():
            last = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
            raise UserError(f"{what} failed (exit {child.returncode}): {last}")
        return {**read_json(result_path), "peak_rss_mib": peak / 2**20}


def _watch(child: subprocess.Popen) -> tuple[int, str]:
    """(the highest resident set in bytes seen while `child` ran, its stderr), once it has exited."""
    watched, peak = psutil.Process(child.pid), 0
    while True:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.Error:
            pass  # it exited between two samples
        try:
            # communicate() drains both pipes, so a talkative child never blocks on a full one.
            _, stderr = child.communicate(timeout=SAMPLE_SECONDS)
            return peak, stderr
        except subprocess.TimeoutExpired:
            continue


def _timed(call):
    """(what `call()` returns, its wall-clock seconds)."""
    start = time.perf_counter()
    value = call()
    return value, time.perf_counter() - start


def _figures(train, test, epoch_seconds, trained, evaluate) -> dict:
    """The measurement's keys from a timed training `(history, seconds)` and an `evaluate()` of the test set.

    As in the reference, the first evaluation traces and the second one is measured.
    """
    history, train_seconds = trained
    evaluate()
    metrics, eval_seconds = _timed(evaluate)
    return {
        "train_images": len(train),
        "epoch_seconds": list(epoch_seconds),
        "train_seconds": train_seconds,
        "eval_images": len(test),
        "eval_seconds": eval_seconds,
        "test_accuracy": metrics["accuracy"],
        "val_accuracy": history["val_accuracy"][-1],
    }


def measure_lab_trainer(trainer_name: str, limit: int, epochs: int, data_dir: str, seed: int = 42,
                        recipe: str = "lecture", tensorboard: bool = False) -> dict:
    """Train and evaluate with the lab's trainer and `recipe` as `invoke train` does.

    The fast recipe fills in its network, batch size, learning rate and
    validation split; `epochs` and `limit` stay as given. With `tensorboard`
    the trainer also writes `invoke train`'s per-epoch summaries (into a
    temporary folder), as a run does.

    Returns:
        {"train_images", "epoch_seconds", "train_seconds", "eval_images", "eval_seconds",
         "test_accuracy", "val_accuracy", "train_flops_per_image"}.
    """
    from classifier.lecture.evaluate import evaluate
    from classifier.lecture.runtime import EpochTimer, gpu_config, seed_everything
    from classifier.machinery.distribute import build_model_and_optimizer, make_trainer
    from classifier.machinery.loading import load_dataset
    from classifier.machinery.recipes import inference_model
    from classifier.machinery.tensorboard import EpochSummaries

    given = {"dataset": "fashion_mnist", "trainer": trainer_name, "limit": limit or None, "epochs": epochs,
             "seed": seed, "data_dir": data_dir, "recipe": recipe}
    config, _ = resolve_recipe(make_config(**given), frozenset(given))
    gpu_config()
    seed_everything(config.seed, config.deterministic)
    dataset, (train, val, test), _ = load_dataset(config)
    model, optimizer, _ = build_model_and_optimizer(config, dataset.image_shape, len(dataset.class_names), len(train))
    timer = EpochTimer()
    with tempfile.TemporaryDirectory(prefix="bench-tensorboard-") as run_dir:
        # First, as in commands.train_command, so that the epoch times include writing them.
        summaries = [EpochSummaries(Path(run_dir), optimizer, dataset.image_shape)] if tensorboard else []
        trainer = make_trainer(config, model, optimizer, callbacks=[*summaries, timer], verbose=0)
        trained = _timed(lambda: trainer.train((train.images, train.labels), (val.images, val.labels)))
    train_flops_per_image = 3 * forward_flops(model)
    served = inference_model(model, config)
    figures = _figures(train, test, timer.epoch_seconds, trained,
                       lambda: evaluate(served, test, len(dataset.class_names), config.eval_batch_size,
                                        direct=trainer_name == "tape"))
    return {**figures, "train_flops_per_image": train_flops_per_image}


def measure_torch_trainer(limit: int, epochs: int, data_dir: str, seed: int = 42) -> dict:
    """Train and evaluate the lecture's PyTorch network as `invoke train --trainer torch` does.

    Returns:
        The keys of `measure_lab_trainer` but the FLOPs. TensorFlow is not imported.
    """
    from classifier.lecture.torch_models import build_torch_model
    from classifier.lecture.torch_train import TorchTrainer, evaluate_torch, seed_torch
    from classifier.machinery.loading import load_dataset

    config = make_config(dataset="fashion_mnist", trainer="torch", limit=limit or None, epochs=epochs,
                         seed=seed, data_dir=data_dir)
    seed_torch(config.seed, config.deterministic)
    dataset, (train, val, test), _ = load_dataset(config)
    model = build_torch_model(config.model, dataset.image_shape, len(dataset.class_names))
    trainer = TorchTrainer(model, config, verbose=False)
    trained = _timed(lambda: trainer.train(train, val))
    return _figures(train, test, trainer.epoch_seconds, trained,
                    lambda: evaluate_torch(model, test, len(dataset.class_names), config.eval_batch_size))


def measure_time_to_accuracy(recipe: str, target: float | None, limit: int, max_epochs: int, data_dir: str,
                             seed: int, epochs: int | None = None) -> dict:
    """Train `recipe` as `invoke train --recipe RECIPE` would, testing after every epoch; stop at `target`.

    Args:
        target: the test accuracy to stop at; None: train every epoch.
        epochs: exactly this many epochs (a scheduled recipe lays its schedule over them); None: a
            scheduled recipe's own epochs, `max_epochs` for the lecture's constant step.

    Returns:
        {"recipe", "seed", "epochs", "batch_size", "precision_policy", "stop_target", "train_seconds"
         (per epoch, cumulative), "test_accuracy" (per epoch), "seconds_to_target" and "epochs_to_target"
         (None when the stop target was not reached or not set)}.
    """
    from classifier.lecture.runtime import gpu_config, seed_everything
    from classifier.machinery.distribute import build_model_and_optimizer, make_trainer
    from classifier.machinery.loading import load_dataset
    from classifier.registry import HYP

    config = make_config(dataset="fashion_mnist", recipe=recipe, limit=limit or None, seed=seed, data_dir=data_dir)
    config, _ = resolve_recipe(config, frozenset({"dataset", "recipe", "limit", "seed", "data_dir"}))
    # The lecture's constant step does not depend on the run's length, so it may run longer to
    # reach the target; a scheduled recipe keeps its own epochs (its schedule ends with them).
    if epochs:
        config = make_config(config, epochs=epochs)
    elif "epochs" not in HYP[recipe]["config"]:
        config = make_config(config, epochs=max_epochs)
    gpu_config()
    seed_everything(config.seed, config.deterministic)
    dataset, (train, val, test), _ = load_dataset(config)
    # As `invoke train` builds them, so that this times what a run computes.
    model, optimizer, policy = build_model_and_optimizer(config, dataset.image_shape, len(dataset.class_names),
                                                         len(train))
    probe = _test_after_every_epoch(model, config, test, target, f"{recipe} seed {seed}")
    trainer = make_trainer(config, model, optimizer, callbacks=[probe], verbose=0)
    trainer.train((train.images, train.labels), (val.images, val.labels))
    return {
        "recipe": recipe,
        "seed": seed,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "precision_policy": policy,
        "stop_target": target,
        "train_seconds": probe.seconds,
        "test_accuracy": probe.accuracy,
        "epochs_to_target": probe.reached,
        "seconds_to_target": probe.seconds[probe.reached - 1] if probe.reached else None,
    }


def _test_after_every_epoch(model, config, test, target: float | None, label: str):
    """A Keras callback that counts training seconds per epoch, then tests (uncounted) and stops at `target`."""
    from tensorflow import keras

    from classifier.lecture.evaluate import predict_direct
    from classifier.machinery.recipes import inference_model

    class TestAfterEveryEpoch(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds, self.accuracy, self.reached = [], [], None
            self._start = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            elapsed = time.perf_counter() - self._start
            self.seconds.append((self.seconds[-1] if self.seconds else 0.0) + elapsed)
            _, accuracy, _ = predict_direct(inference_model(model, config), test, config.eval_batch_size)
            self.accuracy.append(accuracy)
            print(f"[bench] {label}: epoch {epoch + 1}, {self.seconds[-1]:.1f} s, "
                  f"test accuracy {accuracy:.4f}", file=sys.stderr, flush=True)
            if target is not None and accuracy >= target and self.reached is None:
                self.reached = epoch + 1
                model.stop_training = True

    return TestAfterEveryEpoch()


def forward_flops(model) -> int:
    """Floating-point operations of one image's forward pass through the Conv2D and Dense layers.

    A multiply-add counts as 2. Biases, activations, pooling and the loss
    add under 1% for the lecture's network and are left out. A training step
    costs about 3 forward passes (forward, then the gradients with respect to
    the activations and to the weights), the usual count.
    """
    from tensorflow.keras import layers

    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            _, height, width, channels_out = layer.output.shape
            kernel_height, kernel_width, channels_in, _ = layer.kernel.shape
            total += 2 * height * width * channels_out * kernel_height * kernel_width * channels_in
        elif isinstance(layer, layers.Dense):
            channels_in, units = layer.kernel.shape
            total += 2 * channels_in * units
    return int(total)


def peak_gflops(cpuinfo: str | None = None, cores: int | None = None) -> dict:
    """The CPU's float32 peak, worked out from /proc/cpuinfo: cores x clock x FLOP per cycle.

    FLOP per cycle and core from the flags: AVX-512 or AVX2 with FMA gives two
    256-bit fused multiply-add pipes on AMD (Zen 2 to 4; Zen 4 splits a 512-bit
    operation in two halves), 2 x 8 lanes x 2 = 32; AVX-512 on Intel server
    parts with two 512-bit FMA units, 64; AVX without FMA, 16; else 8. The clock
    is the "cpu MHz" the kernel reports (in a VM, the host's nominal clock;
    boost can be higher, so the share of peak is if anything overstated).

    Args:
        cpuinfo: the text of /proc/cpuinfo (None: this machine's; "" where it has none).
        cores: the cores to count (None: those this process may run on).

    Returns:
        {"gflops", "cores", "ghz", "flop_per_cycle", "how"}.
    """
    fields = numerics.cpuinfo_fields(cpuinfo)
    flags = set(fields.get("flags", "").split())
    intel = fields.get("vendor_id") == "GenuineIntel"
    if "avx512f" in flags:
        per_cycle, how = (64, "AVX-512, 2 FMA units") if intel else (32, "AVX-512 on 2 x 256-bit FMA pipes")
    elif "avx2" in flags and "fma" in flags:
        per_cycle, how = 32, "AVX2 + FMA, 2 x 256-bit FMA pipes"
    elif "avx" in flags:
        per_cycle, how = 16, "AVX without FMA"
    else:
        per_cycle, how = 8, "SSE"
    ghz = float(fields.get("cpu MHz", "0") or 0) / 1000
    # The cores this process may run on (a container's or taskset's share), where the system says.
    cores = cores or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    return {"gflops": cores * ghz * per_cycle, "cores": cores, "ghz": ghz, "flop_per_cycle": per_cycle,
            "how": f"{cores} cores x {ghz:.2f} GHz x {per_cycle} float32 FLOP/cycle ({how})"}


def machine_description() -> dict:
    """CPU, cores, TensorFlow build and devices of this machine."""
    import keras
    import tensorflow as tf

    from classifier.machinery.runs import cpu_model

    build = tf.sysconfig.get_build_info()
    cuda = build.get("cuda_version") if build.get("is_cuda_build") else None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "tensorflow_build": f"CUDA {cuda}" if cuda else "CPU build",
        "keras": keras.__version__,
        "torch": installed_version("torch"),
        "devices": [device.name for device in tf.config.list_physical_devices()],
    }


MEASURES = {"lab": measure_lab_trainer, "torch": measure_torch_trainer, "recipe": measure_time_to_accuracy}


def main(argv: list[str] | None = None) -> None:
    """`python -m classifier.machinery.measure SPEC.json --json RESULT.json`: one measurement, as `run_spec` asks."""
    spec_path, flag, result_path = argv if argv is not None else sys.argv[1:]
    assert flag == "--json", "run_child adds --json RESULT"  # only run_spec starts this
    spec = read_json(Path(spec_path))
    write_json(Path(result_path), MEASURES[spec["measure"]](**spec["arguments"]))


if __name__ == "__main__":
    main()
