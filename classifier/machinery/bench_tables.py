"""The benchmark's Markdown: the throughput table, the numerics cost, time to accuracy and the budget.

Every table is written by `tabulate` in its "pipe" format (GitHub's Markdown
tables, columns padded to one width); the figures come from `bench_stats`.

    invoke bench --subjects fit,fast --numerics fastest,portable --output benchmarks/results/numerics_cost
"""

from __future__ import annotations

from tabulate import tabulate

from classifier.machinery.bench_stats import LECTURE_TARGET

# Columns of the throughput table: (key in a summary, heading, format).
COLUMNS = (
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


def pipe_table(headings: list[str], rows: list[list[str]], last_left: bool = False) -> str:
    """A Markdown table of text cells: the first column left-aligned, the others right (the last left too
    with `last_left`), each cell as given (no number parsing, so "1,000" and "2.00x" stay as formatted)."""
    align = ["left", *["right"] * (len(headings) - 1)]
    if last_left:
        align[-1] = "left"
    return tabulate(rows, headings, tablefmt="pipe", colalign=align, disable_numparse=True) + "\n"


def markdown_table(summary: dict[str, dict]) -> str:
    """The summary as a Markdown table, one row per subject; a column only where every row has its figure."""
    columns = [column for column in COLUMNS if all(column[0] in figures for figures in summary.values())]
    rows = [[subject, *(fmt.format(figures[key]) for key, _, fmt in columns)] for subject, figures in summary.items()]
    return pipe_table(["subject", *(heading for _, heading, _ in columns)], rows)


def numerics_cost_table(cost: dict[str, dict]) -> str:
    """The numerics cost as a Markdown table."""
    rows = [[name, f"{figures['train_ratio']:.2f}x", f"{figures['eval_ratio']:.2f}x",
             f"{figures['baseline_accuracy']:.4f}", f"{figures['accuracy']:.4f}",
             f"{figures['accuracy_difference']:+.4f}"]
            for name, figures in cost.items()]
    return pipe_table(["subject: mode vs baseline", "train images/s ratio", "eval images/s ratio", "baseline accuracy",
                       "accuracy", "difference"], rows)


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


def _percent(value: float) -> str:
    """0.935 -> "93.5%" (":.0%" would round it to 94%)."""
    return f"{value * 100:g}%"


def time_to_accuracy_table(summary: dict[str, dict], target: float | str) -> str:
    """The time-to-accuracy summary as a Markdown table; `target` an accuracy or the name to show for it."""
    def number(value, fmt):
        return "not reached" if value is None else fmt.format(value)

    name = target if isinstance(target, str) else _percent(target)
    rows = [[recipe, figures["reached"],
             "not reached" if figures["mean_seconds"] is None
             else f"{figures['mean_seconds']:.1f} ± {figures['spread_seconds']:.1f}",
             number(figures["mean_epochs"], "{:.1f}"), number(figures["time_ratio"], "{:.3f}x"),
             f"{figures['best_accuracy_mean']:.4f}"] for recipe, figures in summary.items()]
    return pipe_table(["recipe", f"reached {name}", f"s to {name} (mean ± sd)", "epochs", "time / lecture's",
                       "best test accuracy (mean)"], rows)


def time_to_accuracy_report(results: dict) -> str:
    """The Markdown sections of a time-to-accuracy run: one table per target, then the budget's."""
    numbers = [value for value in results["settings"]["targets"] if value != LECTURE_TARGET]
    sections = [f"## Time to {_percent(value)} test accuracy\n\n"
                + time_to_accuracy_table(results["summary"][f"{value}"], value) for value in numbers]
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
    def accuracy(value):
        return "none" if value is None else f"{value:.4f}"

    rows = [[recipe, accuracy(figures["mean"]), figures["seeds_with_value"],
             ", ".join(accuracy(value) for value in figures["per_seed"])]
            for recipe, figures in budget["recipes"].items()]
    return (f"## Test accuracy within {budget['seconds']:g} s of training\n\n"
            "After each run's last epoch that ended within the budget; 'none': even its first epoch took longer."
            + (" A run that stopped at the highest target counts the accuracy it stopped with." if stopped else "")
            + "\n\n" + pipe_table(["recipe", f"test accuracy within {budget['seconds']:g} s (mean)", "seeds",
                                    "per seed"], rows, last_left=True))
