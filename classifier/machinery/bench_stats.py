"""The benchmark's arithmetic: medians, ratios, the numerics cost, time to accuracy, the budget.

Pure functions of what `classifier.machinery.measure` recorded, so that every
figure `invoke bench` prints can be checked on made-up measurements
(tests/test_bench_stats.py). The tables are in `bench_tables.py`.

    invoke bench --target lecture,0.935 --seeds 3 --budget 180 --recipes lecture,fast
"""

from __future__ import annotations

import statistics

from classifier import registry
from classifier.config import UserError

LECTURE_TARGET = "lecture"  # the --target word for the lecture recipe's own final test accuracy in the same run


def row_name(subject: str, mode: str, modes) -> str:
    """A row of the table: the subject, with " [MODE]" where several numerics modes are measured."""
    return subject if len(modes) == 1 else f"{subject} [{mode}]"


def summarise(measurements: dict[str, list[dict]], baseline: str = "reference",
              peak: float | None = None) -> dict[str, dict]:
    """Median figures per subject, warm-up epoch left out, with ratios to `baseline`.

    Args:
        measurements: subject -> list of what one child process measured.
        baseline: the row the ratios are against, when it was measured.
        peak: the machine's float32 peak in GFLOP/s (`measure.peak_gflops`); None or 0: no share of peak.

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
        base = summary[row_name(subject, modes[0], modes)]
        for mode in modes[1:]:
            figures = summary[row_name(subject, mode, modes)]
            cost[f"{subject}: {mode} vs {modes[0]}"] = {
                "train_ratio": figures["train_images_per_second"] / base["train_images_per_second"],
                "eval_ratio": figures["eval_images_per_second"] / base["eval_images_per_second"],
                "baseline_accuracy": base["test_accuracy"],
                "accuracy": figures["test_accuracy"],
                "accuracy_difference": figures["test_accuracy"] - base["test_accuracy"],
            }
    return cost


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
