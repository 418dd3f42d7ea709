"""`invoke bench`: the lecture's own script against the lab's `fit`, `tape` and `torch` trainers.

Parse, measure (classifier/machinery/measure.py: each measurement its own child process, the same
files, network and hyperparameters), summarise (bench_stats.py: medians past the warm-up epoch,
ratios against the reference of the same run), write the tables (bench_tables.py).

    invoke bench --limit 12000 --epochs 3 --repeats 3     # about 4 minutes on 2 cores
    invoke bench --subjects fit,fast --numerics fastest,portable --output benchmarks/results/numerics_cost

Time to accuracy, the speed-record convention: each recipe trains `invoke train`'s
way, tested after every epoch (untimed); the training seconds until the test
accuracy first reaches each target, mean and spread over the seeds, with the ratio
to the lecture's recipe. `lecture` is the lecture recipe's own final test accuracy
in the same run; `--budget` adds each recipe's test accuracy within that many
training seconds; `--recipes fast:2` lays a recipe over 2 epochs:

    invoke bench --target lecture,0.935 --seeds 3 --budget 180 --recipes lecture,fast
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from classifier import config as config_module
from classifier import registry
from classifier.config import PROJECT_ROOT, UserError, make_config
from classifier.machinery import bench_stats, bench_tables, measure
from classifier.machinery.files import write_json, write_text

DEFAULT_SUBJECTS = ("reference", "fit", "tape", "torch")
DEFAULT_OUTPUT = "benchmarks/results/latest"


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
        subjects: any of measure.SUBJECTS; ratios need "reference". None: DEFAULT_SUBJECTS
            ("torch" only where PyTorch is installed).
        numerics_modes: each subject is measured under each of these numerics modes; with more than
            one, rows are named "SUBJECT [MODE]" and the results add "numerics_cost" (ratios to the first mode).

    Returns:
        {"machine", "settings", "summary", "measurements"} (and "numerics_cost"), as written to OUTPUT.json.
    """
    subjects = _checked_settings(epochs, repeats, subjects, numerics_modes)
    # Validates limit and data_dir the way `invoke train` does, and checks the files before minutes of work.
    _check_limit(limit)
    config = make_config(dataset="fashion_mnist", limit=limit or None, epochs=epochs, seed=seed, data_dir=data_dir)
    root = _fashion_mnist_root(config)
    target = writable_output(output)
    measurements = measure.measure_subjects(subjects, numerics_modes, repeats, limit, epochs, str(root), seed)
    peak = measure.peak_gflops()
    results = {
        "machine": measure.machine_description(),
        "settings": {"dataset": "fashion_mnist", "limit": limit or None, "epochs": epochs, "repeats": repeats,
                     "seed": seed, "batch_size": config.batch_size, "eval_batch_size_lab": config.eval_batch_size,
                     "numerics": list(numerics_modes)},
        "peak": peak,
        "summary": bench_stats.summarise(measurements, bench_stats.row_name("reference", numerics_modes[0],
                                                                            numerics_modes), peak["gflops"]),
        "measurements": measurements,
    }
    if len(numerics_modes) > 1:
        results["numerics_cost"] = bench_stats.numerics_cost(results["summary"], subjects, numerics_modes)
    write_json(target.with_suffix(".json"), results)
    write_text(target.with_suffix(".md"), bench_tables.markdown_report(results))
    print(bench_tables.markdown_table(results["summary"]))
    if "numerics_cost" in results:
        print(bench_tables.numerics_cost_table(results["numerics_cost"]))
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
        if subject not in measure.SUBJECTS:
            raise UserError(f"unknown benchmark subject {subject!r}; accepted: {', '.join(measure.SUBJECTS)}")
    for mode in numerics_modes:
        if mode not in registry.NUMERICS:
            raise UserError(f"unknown numerics mode {mode!r}; accepted: {', '.join(registry.NUMERICS)}")
    return subjects


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
    numbers, lecture = bench_stats.parse_targets(target if isinstance(target, (tuple, list)) else (target,))
    rows = bench_stats.parse_recipes(recipes)
    if seeds < 1 or max_epochs < 1:
        raise UserError(f"--seeds and the epochs must be at least 1, got {seeds} and {max_epochs}")
    if not budget >= 0:
        raise UserError(f"--budget must be training seconds, at least 0 (0: off), got {budget}")
    baseline = next((label for label, (name, _) in rows.items() if name == "lecture"), None)
    if lecture and baseline is None:
        raise UserError("--target lecture needs the lecture recipe among --recipes, e.g. --recipes lecture,fast")
    _check_limit(limit)
    root = _fashion_mnist_root(make_config(dataset="fashion_mnist", limit=limit or None, data_dir=data_dir))
    target_path = writable_output(output)
    plans = {label: measure.plan(name, epochs, numbers, lecture) for label, (name, epochs) in rows.items()}
    measurements = measure.measure_recipes(plans, seeds, limit, max_epochs, str(root))
    results = {
        "machine": measure.machine_description(),
        "settings": {"dataset": "fashion_mnist", "limit": limit or None, "seeds": seeds, "max_epochs": max_epochs,
                     "targets": [*numbers, *([bench_stats.LECTURE_TARGET] if lecture else [])], "recipes": list(rows),
                     "budget_seconds": budget or None},
        **bench_stats.summarise_runs(measurements, numbers, lecture, baseline or "lecture", budget),
        "measurements": measurements,
    }
    write_json(target_path.with_suffix(".json"), results)
    report = bench_tables.time_to_accuracy_report(results)
    write_text(target_path.with_suffix(".md"), "# Time to accuracy\n\n" + report)
    print(report)
    print(f"[bench] wrote {target_path.with_suffix('.json')} and {target_path.with_suffix('.md')}")
    return results


def _check_limit(limit: int) -> None:
    """The bench's --limit, where 0 means all images (train's message, "leave it out", would name the wrong default)."""
    if limit < 0:
        raise UserError(f"--limit must be 0 (all 60,000 training images) or a number of images, got {limit}")


def _fashion_mnist_root(config) -> Path:
    """The Fashion-MNIST folder `invoke train` would read for `config`, after a UserError if its files are not ready."""
    from classifier.machinery.datasets import get_dataset
    from classifier.machinery.download import problems

    root = config_module.data_dir(config)
    if found := problems(get_dataset("fashion_mnist"), root):
        raise UserError(f"Fashion-MNIST is not ready in {root}: {found[0]}; run: invoke data --dataset fashion_mnist")
    return root


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
