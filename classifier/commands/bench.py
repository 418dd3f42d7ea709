"""Benchmarks: the lecture's own script against the lab's `fit`, `tape` and `torch` trainers.

Every measurement runs in its own child process (so peak memory is each
one's own), on the same Fashion-MNIST files, the same network and the same
hyperparameters. The first epoch (tracing, warm-up) is left out of the
throughput; each figure is the median over the repeats; ratios are against
the reference measured in the same run.

    invoke bench --limit 12000 --epochs 3 --repeats 3     # about 4 minutes on 2 cores
    python -m classifier.commands.bench --limit 12000 --epochs 3 --repeats 3 --output benchmarks/results/latest

The cost of the portable numerics mode (classifier/machinery/numerics.py): every subject
under each mode, in the same run, with a table of portable / fastest ratios
and accuracy differences ("fast" is the fast recipe with the `tape` trainer):

    invoke bench --subjects fit,fast --numerics fastest,portable --output benchmarks/results/numerics_cost

Time to accuracy (`invoke bench --target 0.91 --seeds 3`), the speed-record
convention: each recipe trains `invoke train`'s way in its own process, the
test accuracy is measured after every epoch (that time not counted), and the
training seconds until it first reaches the target are reported, mean and
spread over the seeds, with the ratio to the lecture's recipe from the same run.
The target `lecture` is the lecture recipe's own final test accuracy after its
own epochs in the same run; `--budget` adds each recipe's test accuracy within
that many training seconds; `--recipes fast:2` lays a recipe over 2 epochs:

    invoke bench --target lecture,0.935 --seeds 3 --budget 180 --recipes lecture,fast
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from classifier import config as config_module
from classifier import registry
from classifier.machinery import numerics
from classifier.config import PROJECT_ROOT, UserError, make_config, resolve_recipe
from classifier.machinery.files import write_json, write_text

REFERENCE_SCRIPT = PROJECT_ROOT / "benchmarks" / "lecture_reference.py"
SUBJECTS = ("reference", "fit", "tape", "fast", "torch", "fit+tensorboard", "tape+tensorboard")
# "fast" is the fast recipe (classifier/machinery/recipes.py) with the `tape` trainer, as the README runs it;
# "+tensorboard": the same trainer writing `invoke train`'s per-epoch TensorBoard summaries, to show their cost.
DEFAULT_SUBJECTS = ("reference", "fit", "tape", "torch")
DEFAULT_OUTPUT = "benchmarks/results/latest"

# Columns of the table: (key in a summary, heading, format).
_COLUMNS = (
    ("train_images_per_second", "train images/s", "{:,.0f}"),
    ("train_speedup", "train ratio", "{:.2f}x"),
    ("best_train_images_per_second", "best train images/s", "{:,.0f}"),
    ("best_train_speedup", "best ratio", "{:.2f}x"),
    ("eval_images_per_second", "eval images/s", "{:,.0f}"),
    ("eval_speedup", "eval ratio", "{:.2f}x"),
    ("gflops", "train GFLOP/s", "{:.1f}"),
    ("peak_share", "share of peak", "{:.0%}"),
    ("seconds_per_epoch", "s/epoch", "{:.2f}"),
    ("first_epoch_seconds", "first epoch s", "{:.2f}"),
    ("peak_rss_mib", "peak RSS MiB", "{:,.0f}"),
    ("test_accuracy", "test accuracy", "{:.4f}"),
)


def run_benchmark(limit: int = 12000, epochs: int = 3, repeats: int = 3, output: str = DEFAULT_OUTPUT,
                  data_dir: str = "", seed: int = 42, subjects: tuple[str, ...] | None = None,
                  numerics_modes: tuple[str, ...] = ("fastest",)) -> dict:
    """Measure the reference and the lab's trainers, then write OUTPUT.json and OUTPUT.md.

    Args:
        limit: train on the first N Fashion-MNIST training images (0: all 60,000).
        epochs: epochs per measurement, at least 2: the first one is warm-up.
        repeats: measurements per subject; the table shows their median.
        output: path without suffix for the .json and .md results.
        data_dir: dataset cache holding fashion_mnist/ ("" as for `invoke train`).
        seed: the seed every subject uses.
        subjects: any of SUBJECTS; ratios need "reference". None: DEFAULT_SUBJECTS
            ("torch" only where PyTorch is installed).
        numerics_modes: each subject is measured under each of these numerics
            modes; with more than one, rows are named "SUBJECT [MODE]" and
            the results add "numerics_cost" (ratios to the first mode).

    Returns:
        {"machine", "settings", "summary", "measurements"} (and "numerics_cost"), as written to OUTPUT.json.
    """
    subjects = _checked_settings(epochs, repeats, subjects, numerics_modes)
    # Validates limit and data_dir the way `invoke train` does, and checks the files before minutes of work.
    _check_limit(limit)
    config = make_config(dataset="fashion_mnist", limit=limit or None, epochs=epochs, seed=seed, data_dir=data_dir)
    root = config_module.data_dir(config)
    from classifier.machinery.datasets import get_dataset
    from classifier.machinery.download import problems

    if found := problems(get_dataset("fashion_mnist"), root):
        raise UserError(f"Fashion-MNIST is not ready in {root}: {found[0]}; run: invoke data --dataset fashion_mnist")
    target = writable_output(output)

    def row(subject: str, mode: str) -> str:
        return subject if len(numerics_modes) == 1 else f"{subject} [{mode}]"

    measurements = _measure_interleaved(subjects, numerics_modes, repeats, row,
                                        lambda subject, mode: _measure_in_child(subject, limit, epochs, str(root), seed,
                                                                                numerics_mode=mode))
    results = {
        "machine": machine_description(),
        "settings": {"dataset": "fashion_mnist", "limit": limit or None, "epochs": epochs, "repeats": repeats,
                     "seed": seed, "batch_size": config.batch_size, "eval_batch_size_lab": config.eval_batch_size,
                     "numerics": list(numerics_modes)},
        "peak": peak_gflops(),
        "summary": summarise(measurements, baseline=row("reference", numerics_modes[0])),
        "measurements": measurements,
    }
    if len(numerics_modes) > 1:
        results["numerics_cost"] = numerics_cost(results["summary"], subjects, numerics_modes)
    write_json(target.with_suffix(".json"), results)
    write_text(target.with_suffix(".md"), markdown_report(results))
    print(markdown_table(results["summary"]))
    if "numerics_cost" in results:
        print(numerics_cost_table(results["numerics_cost"]))
    print(f"[bench] wrote {target.with_suffix('.json')} and {target.with_suffix('.md')}")
    return results


def _checked_settings(epochs: int, repeats: int, subjects: tuple[str, ...] | None,
                      numerics_modes: tuple[str, ...]) -> tuple[str, ...]:
    """The subjects to measure (DEFAULT_SUBJECTS for None), after a UserError for any bad setting."""
    if epochs < 2:
        raise UserError(f"epochs must be at least 2 (the first epoch is warm-up and not measured), got {epochs}")
    if repeats < 1:
        raise UserError(f"repeats must be at least 1, got {repeats}")
    if subjects is None:
        import importlib.util

        subjects = tuple(s for s in DEFAULT_SUBJECTS if s != "torch" or importlib.util.find_spec("torch") is not None)
    for subject in subjects:
        if subject not in SUBJECTS:
            raise UserError(f"unknown benchmark subject {subject!r}; accepted: {', '.join(SUBJECTS)}")
    for mode in numerics_modes:
        if mode not in registry.NUMERICS:
            raise UserError(f"unknown numerics mode {mode!r}; accepted: {', '.join(registry.NUMERICS)}")
    return subjects


def _measure_interleaved(subjects, numerics_modes, repeats: int, row, measure) -> dict[str, list[dict]]:
    """{row name: one measurement per repeat}, measured interleaved (reference, fit, tape, reference, ...)
    so that a slow spell of the machine falls on every subject and mode rather than on one."""
    measurements: dict[str, list[dict]] = {row(subject, mode): [] for subject in subjects for mode in numerics_modes}
    for repeat in range(repeats):
        for subject in subjects:
            for mode in numerics_modes:
                print(f"[bench] repeat {repeat + 1}/{repeats}: {row(subject, mode)}", flush=True)
                measurements[row(subject, mode)].append(measure(subject, mode))
    return measurements


def writable_output(output: str) -> Path:
    """The results path (relative ones under the project), checked writable before minutes of measuring.

    Args:
        output: path without suffix for the .json and .md results.

    Returns:
        The absolute path; its folder exists and takes a new file.

    Raises:
        UserError: naming --output and why its folder cannot take the results.
    """
    target = Path(output).expanduser()
    if not target.is_absolute():
        target = PROJECT_ROOT / target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.probe-"):
            pass
    except OSError as error:
        raise UserError(f"--output {output}: cannot write the results in {target.parent} "
                        f"({error.strerror or error}); give --output a path in a folder you can write") from None
    return target


LECTURE_TARGET = "lecture"  # the --target word for the lecture recipe's own final test accuracy in the same run


def run_time_to_accuracy(target: float | str | tuple = 0.91, seeds: int = 3,
                         recipes: tuple[str, ...] = ("lecture", "fast"), limit: int = 0, max_epochs: int = 15,
                         output: str = "benchmarks/results/time_to_accuracy", data_dir: str = "",
                         budget: float = 0.0) -> dict:
    """Training seconds until the test accuracy first reaches each target, per recipe, over `seeds` seeds.

    Args:
        target: one test accuracy to reach, or several (e.g. (0.91, 0.94)), each between 0 and 1, and/or
            "lecture": the lecture recipe's final test accuracy after its own epochs, the mean over the seeds
            of this run. A run stops at the highest accuracy; the lower ones are read off the same test
            accuracy curve. With "lecture", the lecture recipe trains exactly its epochs and never stops early.
        seeds: seeds 0 .. seeds-1, each recipe once per seed (interleaved, one process each).
        recipes: names from registry.RECIPES, each optionally "NAME:EPOCHS" (the recipe laid out over
            EPOCHS epochs, its schedule with them), one row each.
        limit: train on the first N Fashion-MNIST training images (0: all 60,000).
        max_epochs: epochs for a recipe whose schedule does not depend on its length (the
            lecture's constant RMSprop step) chasing a numeric target; a scheduled recipe trains its own epochs.
        output: path without suffix for the .json and .md results.
        data_dir: dataset cache holding fashion_mnist/.
        budget: seconds (0: off); adds each recipe's test accuracy after its last epoch that ended
            within that much training time.

    Returns:
        {"machine", "settings", "summary" (target -> recipe -> figures), "measurements", and "lecture_target"
        and "budget" when asked for}, as written to OUTPUT.json.
    """
    numbers, lecture = parse_targets(target if isinstance(target, (tuple, list)) else (target,))
    rows = parse_recipes(recipes)
    if seeds < 1 or max_epochs < 1:
        raise UserError(f"--seeds and the epochs must be at least 1, got {seeds} and {max_epochs}")
    if not budget >= 0:
        raise UserError(f"--budget must be training seconds, at least 0 (0: off), got {budget}")
    baseline = next((label for label, (name, _) in rows.items() if name == "lecture"), None)
    if lecture and baseline is None:
        raise UserError("--target lecture needs the lecture recipe among --recipes, e.g. --recipes lecture,fast")
    root = _fashion_mnist_root(limit, data_dir)
    target_path = writable_output(output)
    plans = {label: _plan(name, epochs, numbers, lecture) for label, (name, epochs) in rows.items()}
    measurements: dict[str, list[dict]] = {label: [] for label in rows}
    for seed in range(seeds):
        for label, (name, stop, epochs) in plans.items():
            print(f"[bench] seed {seed + 1}/{seeds}: recipe {label}, "
                  + (f"until {stop}" if stop else "all its epochs"), flush=True)
            measurements[label].append(_recipe_in_child(name, stop, limit, max_epochs, str(root), seed, epochs))
    results = {
        "machine": machine_description(),
        "settings": {"dataset": "fashion_mnist", "limit": limit or None, "seeds": seeds, "max_epochs": max_epochs,
                     "targets": [*numbers, *([LECTURE_TARGET] if lecture else [])], "recipes": list(rows),
                     "budget_seconds": budget or None},
        **summarise_runs(measurements, numbers, lecture, baseline or "lecture", budget),
        "measurements": measurements,
    }
    write_json(target_path.with_suffix(".json"), results)
    report = time_to_accuracy_report(results)
    write_text(target_path.with_suffix(".md"), "# Time to accuracy\n\n" + report)
    print(report)
    print(f"[bench] wrote {target_path.with_suffix('.json')} and {target_path.with_suffix('.md')}")
    return results


def parse_targets(targets) -> tuple[tuple[float, ...], bool]:
    """(the numeric targets, ascending; whether "lecture" is among them) from floats or their text.

    Raises:
        UserError: naming a value that is neither a test accuracy between 0 and 1 nor "lecture".
    """
    numbers, lecture = set(), False
    for item in targets:
        if isinstance(item, str) and item.strip() == LECTURE_TARGET:
            lecture = True
            continue
        try:
            value = float(item)
        except (TypeError, ValueError):
            value = float("nan")
        if not 0.0 < value < 1.0:  # also refuses nan
            raise UserError(f"--target {item!r}: give test accuracies between 0 and 1 and/or the word lecture, "
                            "e.g. --target lecture,0.935")
        numbers.add(value)
    if not numbers and not lecture:
        raise UserError("--target is empty: give test accuracies between 0 and 1 and/or the word lecture")
    return tuple(sorted(numbers)), lecture


def parse_recipes(recipes) -> dict[str, tuple[str, int | None]]:
    """{row label: (recipe name, epochs or None for the recipe's own)} from items "RECIPE" or "RECIPE:EPOCHS".

    Raises:
        UserError: naming a bad or repeated item and the accepted form.
    """
    rows: dict[str, tuple[str, int | None]] = {}
    for item in recipes:
        name, colon, epochs = item.strip().partition(":")
        if name not in registry.RECIPES or (colon and not (epochs.isdigit() and int(epochs) >= 1)):
            raise UserError(f"--recipes {item!r}: give RECIPE or RECIPE:EPOCHS, RECIPE one of "
                            f"{', '.join(registry.RECIPES)} and EPOCHS a whole number of at least 1, "
                            "e.g. --recipes lecture,fast:2,fast")
        label = f"{name}:{int(epochs)}" if colon else name
        if label in rows:
            raise UserError(f"--recipes names {label} twice; give each row once, e.g. --recipes lecture,fast:2,fast")
        rows[label] = (name, int(epochs) if colon else None)
    return rows


def _check_limit(limit: int) -> None:
    """The bench's --limit, where 0 means all images (train's message, "leave it out", would name the wrong default)."""
    if limit < 0:
        raise UserError(f"--limit must be 0 (all 60,000 training images) or a number of images, got {limit}")


def _fashion_mnist_root(limit: int, data_dir: str) -> Path:
    """The Fashion-MNIST folder `invoke train` would read, after a UserError if its files are not ready."""
    from classifier.machinery.datasets import get_dataset
    from classifier.machinery.download import problems

    _check_limit(limit)
    root = config_module.data_dir(make_config(dataset="fashion_mnist", limit=limit or None, data_dir=data_dir))
    if found := problems(get_dataset("fashion_mnist"), root):
        raise UserError(f"Fashion-MNIST is not ready in {root}: {found[0]}; run: invoke data --dataset fashion_mnist")
    return root


def _plan(name: str, epochs: int | None, numbers: tuple[float, ...], lecture: bool):
    """(recipe, the accuracy its runs stop at or None, its epochs or None for the usual choice)."""
    if lecture and name == "lecture":
        # The lecture target is this recipe's final accuracy after its own epochs, so it trains
        # exactly those, to the end: no early stop, no --epochs extension.
        own, _ = resolve_recipe(make_config(dataset="fashion_mnist", recipe=name), frozenset({"dataset", "recipe"}))
        return name, None, epochs or own.epochs
    # The lecture target is known only when every lecture run has finished, so only a numeric one can stop a run.
    return name, numbers[-1] if numbers else None, epochs


def _recipe_in_child(recipe: str, target: float | None, limit: int, max_epochs: int, data_root: str, seed: int,
                     epochs: int | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        result_path = Path(folder) / "result.json"
        command = [sys.executable, "-m", "classifier.commands.bench", "--child-recipe", recipe,
                   "--limit", str(limit), "--epochs", str(max_epochs), "--seed", str(seed), "--data-dir", data_root,
                   "--json", str(result_path), *(["--target", str(target)] if target else []),
                   *(["--child-epochs", str(epochs)] if epochs else [])]
        completed = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
        if completed.returncode != 0 or not result_path.exists():
            raise UserError(f"time to accuracy of {recipe} failed (exit {completed.returncode}): "
                            f"{completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else 'no output'}")
        return json.loads(result_path.read_text())


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
    from classifier.machinery.distribute import build_model_and_optimizer, make_trainer
    from classifier.machinery.loading import load_dataset
    from classifier.registry import HYP
    from classifier.lecture.runtime import gpu_config, seed_everything

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


def epochs_to(run: dict, target: float) -> int | None:
    """The first epoch (counted from 1) whose test accuracy reaches `target`, or None."""
    return next((epoch for epoch, accuracy in enumerate(run["test_accuracy"], 1) if accuracy >= target), None)


def summarise_runs(measurements: dict[str, list[dict]], numbers: tuple[float, ...], lecture: bool,
                   baseline: str = "lecture", budget: float = 0.0) -> dict:
    """Every figure of a time-to-accuracy run, from its measurements.

    Args:
        measurements: row label -> one run per seed (as measure_time_to_accuracy returns).
        numbers: the numeric targets.
        lecture: whether the "lecture" target was asked for; then `baseline`'s runs define it.
        baseline: the row the time ratios are against (the lecture recipe's).
        budget: seconds, or 0 for no "test accuracy within" figures.

    Returns:
        {"summary": {"0.91"..., "lecture": recipe -> figures}, "lecture_target": {"value", "seconds",
        "epochs", "seeds"} (with lecture), "budget": {"seconds", "recipes": recipe -> figures} (with a budget)}.
    """
    results: dict = {"summary": {f"{value}": summarise_time_to_accuracy(measurements, value, baseline)
                                 for value in numbers}}
    if lecture:
        runs = measurements[baseline]
        resolved = results["lecture_target"] = {
            "value": statistics.mean(run["test_accuracy"][-1] for run in runs),
            # The time it took to produce that accuracy: all of the lecture's epochs.
            "seconds": statistics.mean(run["train_seconds"][-1] for run in runs),
            "epochs": len(runs[0]["test_accuracy"]),
            "seeds": len(runs),
            "recipe": baseline,
        }
        results["summary"][LECTURE_TARGET] = summarise_time_to_accuracy(
            measurements, resolved["value"], baseline, baseline_seconds=resolved["seconds"])
    if budget:
        results["budget"] = {"seconds": budget, "recipes": {label: accuracy_within(runs, budget)
                                                            for label, runs in measurements.items()}}
    return results


def accuracy_within(runs: list[dict], budget: float) -> dict:
    """Over the seeds: the test accuracy after each run's last epoch that ended within `budget` training seconds.

    Returns:
        {"per_seed" (None where even the first epoch took longer), "mean" (over the seeds with a value,
        None if none), "seeds_with_value" ("k/n")}.
    """
    per_seed = []
    for run in runs:
        within = [accuracy for seconds, accuracy in zip(run["train_seconds"], run["test_accuracy"]) if seconds <= budget]
        per_seed.append(within[-1] if within else None)
    values = [value for value in per_seed if value is not None]
    return {"per_seed": per_seed, "mean": statistics.mean(values) if values else None,
            "seeds_with_value": f"{len(values)}/{len(per_seed)}"}


def summarise_time_to_accuracy(measurements: dict[str, list[dict]], target: float, baseline: str = "lecture",
                               baseline_seconds: float | None = None) -> dict[str, dict]:
    """Per recipe: mean and standard deviation of the seconds to `target` over the seeds that reached it,
    how many reached it, the best test accuracy's mean, and the ratio of mean times to `baseline`'s
    (or to `baseline_seconds` where given: the lecture's whole training for the lecture target)."""
    summary = {}
    for recipe, runs in measurements.items():
        epochs = [epoch for epoch in (epochs_to(run, target) for run in runs) if epoch]
        times = [run["train_seconds"][epoch - 1] for run in runs if (epoch := epochs_to(run, target))]
        summary[recipe] = {
            "reached": f"{len(times)}/{len(runs)}",
            "mean_seconds": statistics.mean(times) if times else None,
            "spread_seconds": statistics.stdev(times) if len(times) > 1 else 0.0 if times else None,
            "mean_epochs": statistics.mean(epochs) if epochs else None,
            "best_accuracy_mean": statistics.mean(max(run["test_accuracy"]) for run in runs),
        }
    base = baseline_seconds if baseline_seconds is not None else summary.get(baseline, {}).get("mean_seconds")
    for figures in summary.values():
        figures["time_ratio"] = figures["mean_seconds"] / base if base and figures["mean_seconds"] else None
    return summary


def _percent(value: float) -> str:
    """0.935 -> "93.5%" (":.0%" would round it to 94%)."""
    return f"{value * 100:g}%"


def time_to_accuracy_table(summary: dict[str, dict], target: float | str) -> str:
    """The time-to-accuracy summary as a Markdown table; `target` an accuracy or the name to show for it."""
    def number(value, fmt):
        return "not reached" if value is None else fmt.format(value)

    name = target if isinstance(target, str) else _percent(target)
    heading = (f"| recipe | reached {name} | s to {name} (mean ± sd) | epochs | time / lecture's | "
               "best test accuracy (mean) |")
    lines = [heading, "|---|---:|---:|---:|---:|---:|"]
    for recipe, figures in summary.items():
        seconds = ("not reached" if figures["mean_seconds"] is None
                   else f"{figures['mean_seconds']:.1f} ± {figures['spread_seconds']:.1f}")
        lines.append(f"| {recipe} | {figures['reached']} | {seconds} | {number(figures['mean_epochs'], '{:.1f}')} | "
                     f"{number(figures['time_ratio'], '{:.3f}x')} | {figures['best_accuracy_mean']:.4f} |")
    return "\n".join(lines) + "\n"


def time_to_accuracy_report(results: dict) -> str:
    """The Markdown sections of a time-to-accuracy run: one table per target, then the budget's."""
    numbers = [value for value in results["settings"]["targets"] if value != LECTURE_TARGET]
    sections = [f"## Time to {_percent(value)} test accuracy\n\n" + time_to_accuracy_table(results["summary"][f"{value}"], value)
                for value in numbers]
    if resolved := results.get("lecture_target"):
        note = (f"Time / lecture's: against the lecture's mean training time for its {resolved['epochs']} epochs, "
                f"{resolved['seconds']:.1f} s.")
        if numbers and resolved["value"] > numbers[-1]:
            note += (f" The other recipes' runs stopped at {numbers[-1]}, below this value: "
                     "'not reached' means not reached before they stopped.")
        sections.append(f"## Time to the lecture's final test accuracy ({resolved['value']:.4f}, mean of "
                        f"{resolved['seeds']} seeds after {resolved['epochs']} epochs)\n\n{note}\n\n"
                        + time_to_accuracy_table(results["summary"][LECTURE_TARGET], f"{resolved['value']:.4f}"))
    if budget := results.get("budget"):
        sections.append(budget_table(budget, stopped=bool(numbers)))
    return "\n".join(sections)


def budget_table(budget: dict, stopped: bool = False) -> str:
    """The test accuracy within the budget, per recipe: the mean over the seeds, then each seed's."""
    lines = [f"## Test accuracy within {budget['seconds']:g} s of training\n",
             "After each run's last epoch that ended within the budget; 'none': even its first epoch took longer."
             + (" A run that stopped at the highest target counts the accuracy it stopped with." if stopped else ""),
             "", f"| recipe | test accuracy within {budget['seconds']:g} s (mean) | seeds | per seed |",
             "|---|---:|---:|---|"]
    for recipe, figures in budget["recipes"].items():
        mean = "none" if figures["mean"] is None else f"{figures['mean']:.4f}"
        seeds = ", ".join("none" if value is None else f"{value:.4f}" for value in figures["per_seed"])
        lines.append(f"| {recipe} | {mean} | {figures['seeds_with_value']} | {seeds} |")
    return "\n".join(lines) + "\n"


def _measure_in_child(subject: str, limit: int, epochs: int, data_root: str, seed: int,
                      numerics_mode: str = "fastest") -> dict:
    """One measurement in a fresh Python process under `numerics_mode`; returns what it wrote as JSON."""
    # The child gets the mode's settings in its environment before it starts,
    # which works alike for the lecture's script and the lab's trainers.
    environment = dict(os.environ)
    numerics.apply(numerics_mode, environment, announce=lambda line: print(f"[bench] {line}"))
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        result_path = Path(folder) / "result.json"
        common = ["--limit", str(limit), "--epochs", str(epochs), "--seed", str(seed), "--json", str(result_path)]
        if subject == "reference":
            command = [sys.executable, str(REFERENCE_SCRIPT), "--data-dir", data_root, *common]
        else:
            command = [sys.executable, "-m", "classifier.commands.bench", "--child", subject, "--data-dir", data_root, *common]
        completed = subprocess.run(command, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True)
        if completed.returncode != 0 or not result_path.exists():
            raise UserError(f"benchmark of {subject} failed (exit {completed.returncode}): "
                            f"{completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else 'no output'}")
        return json.loads(result_path.read_text())


def measure_lab_trainer(trainer_name: str, limit: int, epochs: int, data_dir: str, seed: int = 42,
                        recipe: str = "lecture", tensorboard: bool = False) -> dict:
    """Train and evaluate with the lab's trainer and `recipe` as `invoke train` does.

    The fast recipe fills in its network, batch size, learning rate and
    validation split; `epochs` and `limit` stay as given. With `tensorboard`
    the trainer also writes `invoke train`'s per-epoch summaries (into a
    temporary folder), as a run does.

    Returns:
        {"train_images", "epoch_seconds", "train_seconds", "eval_images", "eval_seconds",
         "test_accuracy", "val_accuracy", "peak_rss_mib"}.
    """
    from classifier.machinery.loading import load_dataset
    from classifier.machinery.distribute import build_model_and_optimizer, make_trainer
    from classifier.lecture.evaluate import evaluate
    from classifier.machinery.recipes import inference_model
    from classifier.lecture.runtime import EpochTimer, gpu_config, seed_everything
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
        start = time.perf_counter()
        history = trainer.train((train.images, train.labels), (val.images, val.labels))
        train_seconds = time.perf_counter() - start
    train_flops_per_image = 3 * forward_flops(model)
    direct = trainer_name == "tape"
    model = inference_model(model, config)
    # As in the reference: the first evaluation traces, the second is measured.
    evaluate(model, test, len(dataset.class_names), config.eval_batch_size, direct=direct)
    start = time.perf_counter()
    metrics = evaluate(model, test, len(dataset.class_names), config.eval_batch_size, direct=direct)
    eval_seconds = time.perf_counter() - start
    return {
        "train_images": len(train),
        "epoch_seconds": timer.epoch_seconds,
        "train_seconds": train_seconds,
        "eval_images": len(test),
        "eval_seconds": eval_seconds,
        "test_accuracy": metrics["accuracy"],
        "val_accuracy": history["val_accuracy"][-1],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_flops_per_image": train_flops_per_image,
    }


def measure_torch_trainer(limit: int, epochs: int, data_dir: str, seed: int = 42) -> dict:
    """Train and evaluate the lecture's PyTorch network as `invoke train --trainer torch` does.

    Returns:
        The keys of `measure_lab_trainer`. TensorFlow is not imported.
    """
    from classifier.machinery.loading import load_dataset
    from classifier.lecture.torch_models import build_torch_model
    from classifier.lecture.torch_train import TorchTrainer, evaluate_torch, seed_torch

    config = make_config(dataset="fashion_mnist", trainer="torch", limit=limit or None, epochs=epochs,
                         seed=seed, data_dir=data_dir)
    seed_torch(config.seed, config.deterministic)
    dataset, (train, val, test), _ = load_dataset(config)
    model = build_torch_model(config.model, dataset.image_shape, len(dataset.class_names))
    trainer = TorchTrainer(model, config, verbose=False)
    start = time.perf_counter()
    history = trainer.train(train, val)
    train_seconds = time.perf_counter() - start
    # Evaluated twice like the TensorFlow subjects, the second one timed.
    evaluate_torch(model, test, len(dataset.class_names), config.eval_batch_size)
    start = time.perf_counter()
    metrics = evaluate_torch(model, test, len(dataset.class_names), config.eval_batch_size)
    eval_seconds = time.perf_counter() - start
    return {
        "train_images": len(train),
        "epoch_seconds": trainer.epoch_seconds,
        "train_seconds": train_seconds,
        "eval_images": len(test),
        "eval_seconds": eval_seconds,
        "test_accuracy": metrics["accuracy"],
        "val_accuracy": history["val_accuracy"][-1],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


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

    Returns:
        {"gflops", "cores", "ghz", "flop_per_cycle", "how"}.
    """
    if cpuinfo is None:
        cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
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
    cores = cores or len(os.sched_getaffinity(0))
    return {"gflops": cores * ghz * per_cycle, "cores": cores, "ghz": ghz, "flop_per_cycle": per_cycle,
            "how": f"{cores} cores x {ghz:.2f} GHz x {per_cycle} float32 FLOP/cycle ({how})"}


def summarise(measurements: dict[str, list[dict]], baseline: str = "reference",
              peak: float | None = None) -> dict[str, dict]:
    """Median figures per subject, warm-up epoch left out, with ratios to `baseline`.

    Args:
        measurements: subject -> list of what one child process measured.
        baseline: the row the ratios are against, when it was measured.
        peak: the machine's float32 peak in GFLOP/s (default: peak_gflops()).

    Returns:
        subject -> {"train_images_per_second", "eval_images_per_second", "seconds_per_epoch",
        "first_epoch_seconds", "peak_rss_mib", "test_accuracy", "repeats", and, when a
        reference was measured, "train_speedup", "best_train_speedup" and "eval_speedup" (lab / reference);
        "best_train_images_per_second" is the fastest steady epoch of all repeats}.
    """
    summary = {}
    for subject, runs in measurements.items():
        # Each run's steady epoch time: the median of its epochs after the first.
        steady = [statistics.median(run["epoch_seconds"][1:]) for run in runs]
        summary[subject] = {
            "seconds_per_epoch": statistics.median(steady),
            "train_images_per_second": statistics.median(run["train_images"] / s for run, s in zip(runs, steady)),
            # The fastest steady epoch of all repeats: what a quiet moment of a shared machine gives.
            "best_train_images_per_second": max(run["train_images"] / min(run["epoch_seconds"][1:]) for run in runs),
            "first_epoch_seconds": statistics.median(run["epoch_seconds"][0] for run in runs),
            "eval_images_per_second": statistics.median(run["eval_images"] / run["eval_seconds"] for run in runs),
            "peak_rss_mib": statistics.median(run["peak_rss_mib"] for run in runs),
            "test_accuracy": statistics.median(run["test_accuracy"] for run in runs),
            "repeats": len(runs),
        }
    # FLOPs per training image: each lab child counts its own network's; the
    # lecture's script and the torch trainer train the lecture's network, as `fit` does.
    lecture_flops = next((run["train_flops_per_image"] for subject, runs in measurements.items() for run in runs
                          if subject.split(" ")[0] in ("fit", "tape") and "train_flops_per_image" in run), None)
    peak = peak if peak is not None else peak_gflops()["gflops"]
    for subject, figures in summary.items():
        flops = measurements[subject][0].get("train_flops_per_image", lecture_flops)
        if flops:
            # Training steps only: each epoch's validation forward pass is left out, so this understates a little.
            figures["gflops"] = figures["train_images_per_second"] * flops / 1e9
            if peak:
                figures["peak_share"] = figures["gflops"] / peak
    if baseline in summary:
        base = summary[baseline]
        for figures in summary.values():
            figures["train_speedup"] = figures["train_images_per_second"] / base["train_images_per_second"]
            figures["best_train_speedup"] = (figures["best_train_images_per_second"]
                                             / base["best_train_images_per_second"])
            figures["eval_speedup"] = figures["eval_images_per_second"] / base["eval_images_per_second"]
    return summary


def numerics_cost(summary: dict[str, dict], subjects, modes) -> dict[str, dict]:
    """Per subject, each later mode against the first: training and evaluation speed ratios, accuracy difference.

    Args:
        summary: summarise()'s result with rows named "SUBJECT [MODE]".
        subjects: the subjects measured.
        modes: the numerics modes measured; the first is the baseline.

    Returns:
        "SUBJECT: MODE vs FIRST" -> {"train_ratio", "eval_ratio", "baseline_accuracy", "accuracy",
        "accuracy_difference"}.
    """
    cost = {}
    for subject in subjects:
        base = summary[f"{subject} [{modes[0]}]"]
        for mode in modes[1:]:
            figures = summary[f"{subject} [{mode}]"]
            cost[f"{subject}: {mode} vs {modes[0]}"] = {
                "train_ratio": figures["train_images_per_second"] / base["train_images_per_second"],
                "eval_ratio": figures["eval_images_per_second"] / base["eval_images_per_second"],
                "baseline_accuracy": base["test_accuracy"],
                "accuracy": figures["test_accuracy"],
                "accuracy_difference": figures["test_accuracy"] - base["test_accuracy"],
            }
    return cost


def numerics_cost_table(cost: dict[str, dict]) -> str:
    """The numerics cost as a Markdown table."""
    lines = ["| subject: mode vs baseline | train images/s ratio | eval images/s ratio | baseline accuracy "
             "| accuracy | difference |", "|---|---:|---:|---:|---:|---:|"]
    for name, figures in cost.items():
        lines.append(f"| {name} | {figures['train_ratio']:.2f}x | {figures['eval_ratio']:.2f}x | "
                     f"{figures['baseline_accuracy']:.4f} | {figures['accuracy']:.4f} | "
                     f"{figures['accuracy_difference']:+.4f} |")
    return "\n".join(lines) + "\n"


def markdown_table(summary: dict[str, dict]) -> str:
    """The summary as a Markdown table, one row per subject."""
    columns = [column for column in _COLUMNS if all(column[0] in figures for figures in summary.values())]
    lines = ["| subject | " + " | ".join(heading for _, heading, _ in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for subject, figures in summary.items():
        cells = [fmt.format(figures[key]) for key, _, fmt in columns]
        lines.append(f"| {subject} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_report(results: dict) -> str:
    """The table with the machine and settings it was measured with."""
    machine, settings = results["machine"], results["settings"]
    limit = settings["limit"] or "all 60,000"
    return (
        "# Benchmark: lecture reference vs the lab's trainers\n\n"
        f"Fashion-MNIST, first {limit} training images (80% train, 20% validation), "
        f"{settings['epochs']} epochs of which the first is warm-up, median of {settings['repeats']} "
        f"repeat(s), batch {settings['batch_size']}, seed {settings['seed']}. "
        "Images/s counts the training images per steady epoch (training plus validation); "
        "best: the fastest steady epoch over the repeats, what a quiet moment of a shared machine gives; "
        "eval images/s is the whole test-set evaluation (the reference: `evaluate` and `predict` at batch 32; "
        f"the lab: `classifier.lecture.evaluate.evaluate` at batch {settings['eval_batch_size_lab']}). "
        "Ratios are lab / reference, measured in the same run. GFLOP/s: training images/s x "
        "3 x the network's forward FLOPs (Conv2D and Dense multiply-adds, `forward_flops`); "
        f"peak {results['peak']['gflops']:.0f} GFLOP/s = {results['peak']['how']}.\n\n"
        + markdown_table(results["summary"])
        + ("\nThe numerics modes' cost, ratios against the first mode, measured in the same run:\n\n"
           + numerics_cost_table(results["numerics_cost"]) if "numerics_cost" in results else "")
        + f"\nMachine: {machine['cpu']}, {machine['cores']} cores, TensorFlow {machine['tensorflow']} "
        f"({machine['tensorflow_build']}), Keras {machine['keras']}, PyTorch {machine.get('torch') or 'not installed'}, "
        f"Python {machine['python']}, devices {', '.join(machine['devices'])}. The torch subject is the lab's "
        "`--trainer torch` (classifier.lecture.torch_train, `evaluate_torch` at the same batch).\n"
    )


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
        "torch": _torch_version(),
        "devices": [device.name for device in tf.config.list_physical_devices()],
    }


def _torch_version() -> str | None:
    """torch's version and build, without importing it into this process (None if not installed)."""
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> None:
    """`python -m classifier.commands.bench`: the whole benchmark, or (with --child) one measurement."""
    import argparse

    parser = argparse.ArgumentParser(description="Benchmark the lecture's script against the lab's trainers.")
    parser.add_argument("--limit", type=int, default=12000, help="first N training images (0: all)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per measurement; the first is warm-up")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per subject (median shown)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="results path without suffix")
    parser.add_argument("--data-dir", default="", help="dataset cache")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--subjects", default="", help=f"comma-separated, of {', '.join(SUBJECTS)}")
    parser.add_argument("--numerics", default="fastest", help="comma-separated numerics modes, e.g. fastest,portable")
    parser.add_argument("--target", default="", help="time to these test accuracies instead (e.g. lecture,0.935)")
    parser.add_argument("--seeds", type=int, default=3, help="with --target: seeds per recipe")
    parser.add_argument("--recipes", default="lecture,fast", help="with --target: RECIPE or RECIPE:EPOCHS, comma-separated")
    parser.add_argument("--budget", type=float, default=0.0, help="with --target: test accuracy within these seconds")
    parser.add_argument("--child", choices=SUBJECTS[1:], help=argparse.SUPPRESS)
    parser.add_argument("--child-recipe", default="", help=argparse.SUPPRESS)
    parser.add_argument("--child-epochs", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--json", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.child_recipe:
            result = measure_time_to_accuracy(args.child_recipe, float(args.target) if args.target else None,
                                              args.limit, args.epochs, args.data_dir, args.seed,
                                              epochs=args.child_epochs or None)
            Path(args.json).write_text(json.dumps(result))
        elif args.target:
            run_time_to_accuracy(tuple(args.target.split(",")), args.seeds, recipes=tuple(args.recipes.split(",")),
                                 limit=args.limit, max_epochs=args.epochs, output=args.output,
                                 data_dir=args.data_dir, budget=args.budget)
        elif args.child == "torch":
            result = measure_torch_trainer(args.limit, args.epochs, args.data_dir, args.seed)
            Path(args.json).write_text(json.dumps(result))
        elif args.child:
            trainer, _, extra = args.child.partition("+")
            trainer, recipe = ("tape", "fast") if trainer == "fast" else (trainer, "lecture")
            result = measure_lab_trainer(trainer, args.limit, args.epochs, args.data_dir, args.seed, recipe=recipe,
                                         tensorboard=extra == "tensorboard")
            Path(args.json).write_text(json.dumps(result))
        else:
            run_benchmark(args.limit, args.epochs, args.repeats, args.output, args.data_dir, args.seed,
                          subjects=tuple(args.subjects.split(",")) if args.subjects else None,
                          numerics_modes=tuple(args.numerics.split(",")))
    except UserError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
