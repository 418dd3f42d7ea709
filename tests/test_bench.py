"""`invoke bench` (classifier/commands/bench.py): its errors, and small real runs through the command.

The arithmetic and the tables are tested on made-up measurements in
test_bench_stats.py and test_bench_tables.py, the children in test_measure.py.
"""

import json
import os
import re
import statistics

import pytest

from classifier.commands.bench import run_benchmark, run_time_to_accuracy
from classifier.config import UserError
from conftest import remount_read_only, run_invoke


def has_row(markdown: str, first_cell: str) -> bool:
    """Whether a Markdown table in `markdown` has a row whose first cell is `first_cell` (tabulate pads cells)."""
    return re.search(rf"^\| {re.escape(first_cell)} +\|", markdown, re.MULTILINE) is not None


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 1}, "epochs must be at least 2"),
    ({"repeats": 0}, "repeats must be at least 1"),
    ({"subjects": ("reference", "keras2")}, "unknown benchmark subject 'keras2'"),
    ({"numerics_modes": ("fastest", "exact")}, "unknown numerics mode 'exact'; accepted: fastest, portable"),
])
def test_bad_settings_are_refused_before_any_work(kwargs, message):
    with pytest.raises(UserError, match=message):
        run_benchmark(**kwargs)


def test_missing_data_is_named(tmp_path):
    with pytest.raises(UserError, match="Fashion-MNIST is not ready"):
        run_benchmark(data_dir=str(tmp_path), output=str(tmp_path / "out"))


@pytest.mark.slow
def test_small_real_benchmark_writes_json_and_markdown(fashion_lab, tmp_path):
    output = tmp_path / "results" / "latest"
    results = run_benchmark(limit=500, epochs=2, repeats=1, output=str(output), data_dir=str(fashion_lab / "data"))
    written = json.loads(output.with_suffix(".json").read_text())
    assert written["summary"] == results["summary"]
    assert set(written["summary"]) == {"reference", "fit", "tape", "torch"}
    for subject, figures in written["summary"].items():
        assert figures["train_images_per_second"] > 0 and figures["peak_rss_mib"] > 0
        assert 0.1 < figures["test_accuracy"] <= 1.0, subject
        assert len(written["measurements"][subject][0]["epoch_seconds"]) == 2
    assert written["machine"]["cores"] >= 1 and written["machine"]["tensorflow"].startswith("2.")
    markdown = output.with_suffix(".md").read_text()
    assert has_row(markdown, "reference") and has_row(markdown, "tape") and "Machine:" in markdown
    assert not list(output.parent.glob(".tmp-*"))


@pytest.mark.slow
def test_numerics_cost_of_the_fast_recipe_is_measured(fashion_lab, tmp_path):
    output = tmp_path / "cost"
    results = run_benchmark(limit=500, epochs=2, repeats=1, output=str(output), data_dir=str(fashion_lab / "data"),
                            subjects=("fast",), numerics_modes=("fastest", "portable"))
    assert set(results["summary"]) == {"fast [fastest]", "fast [portable]"}
    rows = results["measurements"]
    fastest, portable = rows["fast [fastest]"], rows["fast [portable]"]
    figures = results["numerics_cost"]["fast: portable vs fastest"]
    # The cost is read off the recorded rows: the difference of the two medians, the ratio of the two rates.
    assert figures["accuracy_difference"] == (statistics.median(run["test_accuracy"] for run in portable)
                                              - statistics.median(run["test_accuracy"] for run in fastest))

    def rate(runs):
        return statistics.median(run["train_images"] / statistics.median(run["epoch_seconds"][1:]) for run in runs)

    assert figures["train_ratio"] == pytest.approx(rate(portable) / rate(fastest), rel=1e-12)
    assert has_row(output.with_suffix(".md").read_text(), "fast: portable vs fastest")


@pytest.mark.slow
def test_tensorboard_rows_are_timed_by_their_epochs_and_change_no_result(fashion_lab, tmp_path):
    results = run_benchmark(limit=500, epochs=2, repeats=1, output=str(tmp_path / "tb"),
                            data_dir=str(fashion_lab / "data"), subjects=("fit", "fit+tensorboard"))
    plain, logged = results["summary"]["fit"], results["summary"]["fit+tensorboard"]
    # The summaries read the epoch's logs only: the same weights, so the same test accuracy to the digit.
    assert logged["test_accuracy"] == plain["test_accuracy"]
    # The row's speed is its recorded steady epoch (writing the summaries included, their callback runs first
    # inside it), and the epochs lie within the training that was timed whole.
    run = results["measurements"]["fit+tensorboard"][0]
    assert logged["seconds_per_epoch"] == run["epoch_seconds"][1]
    assert run["train_images"] == 400  # 80% of 500
    assert logged["train_images_per_second"] == 400 / run["epoch_seconds"][1]
    assert 0 < sum(run["epoch_seconds"]) <= run["train_seconds"]
    assert has_row((tmp_path / "tb.md").read_text(), "fit+tensorboard")


@pytest.mark.parametrize("flags, message", [
    (("--target", "lecture,0.9x"), "error: --target '0.9x': give test accuracies between 0 and 1 and/or the word "
                                   "lecture, e.g. --target lecture,0.935"),
    (("--target", "lecture", "--recipes", "lecture,fast:0"),
     "error: --recipes 'fast:0': give RECIPE or RECIPE:EPOCHS, RECIPE one of lecture, fast and EPOCHS a whole number "
     "of at least 1, e.g. --recipes lecture,fast:2,fast"),
    (("--target", "lecture", "--recipes", "fast"),
     "error: --target lecture needs the lecture recipe among --recipes, e.g. --recipes lecture,fast"),
    (("--target", "0.9", "--budget", "-1"), "error: --budget must be training seconds, at least 0 (0: off), got -1.0"),
    (("--budget", "180"), "error: --recipes and --budget go with --target, e.g. --target lecture,0.935 --budget 180"),
], ids=["target", "recipes", "no-lecture", "budget", "without-target"])
def test_bad_time_to_accuracy_flags_are_one_line(flags, message):
    result = run_invoke("bench", *flags)
    assert (result.returncode, result.stderr.strip(), result.stdout) == (2, message, "")


@pytest.mark.parametrize("kwargs, message", [
    ({"target": 1.5}, "--target 1.5: give test accuracies between 0 and 1 and/or the word lecture"),
    ({"recipes": ("lecture", "quick")}, "--recipes 'quick': give RECIPE or RECIPE:EPOCHS, RECIPE one of lecture, fast"),
    ({"seeds": 0}, "--seeds and the epochs must be at least 1"),
])
def test_bad_time_to_accuracy_settings_are_refused(kwargs, message):
    with pytest.raises(UserError, match=message):
        run_time_to_accuracy(**kwargs)


@pytest.mark.slow
def test_small_time_to_accuracy_stops_at_the_target(fashion_lab, tmp_path):
    output = tmp_path / "tta"
    results = run_time_to_accuracy(target=0.6, seeds=1, recipes=("lecture",), limit=600, max_epochs=3,
                                   output=str(output), data_dir=str(fashion_lab / "data"))
    run = results["measurements"]["lecture"][0]
    assert run["epochs_to_target"] is not None, run  # the lecture's network passes 60% within 3 epochs of 480 images
    assert len(run["test_accuracy"]) == run["epochs_to_target"]  # stopped at the target
    assert run["test_accuracy"][-1] >= 0.6 > max(run["test_accuracy"][:-1], default=0.0)
    assert results["summary"]["0.6"]["lecture"]["time_ratio"] == 1.0
    assert re.search(r"^\| lecture +\| +1/1 \|", output.with_suffix(".md").read_text(), re.MULTILINE)


@pytest.mark.slow
def test_the_lecture_target_and_the_budget_in_a_small_real_run(fashion_lab, tmp_path):
    output = tmp_path / "tta"
    result = run_invoke("bench", "--target", "lecture", "--recipes", "lecture:1,fast:1", "--seeds", "1",
                        "--limit", "600", "--budget", "1000", "--output", str(output),
                        "--data-dir", str(fashion_lab / "data"))
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads(output.with_suffix(".json").read_text())
    lecture, fast = results["measurements"]["lecture:1"][0], results["measurements"]["fast:1"][0]
    assert results["lecture_target"]["value"] == lecture["test_accuracy"][-1]
    assert results["lecture_target"]["seconds"] == lecture["train_seconds"][-1] > 0
    for run, batch_size in ((lecture, 32), (fast, 128)):
        # Each trained its one epoch to the end: nothing could stop it, the lecture target being unknown.
        assert (run["epochs"], run["batch_size"], run["stop_target"]) == (1, batch_size, None)
        assert len(run["test_accuracy"]) == 1 and run["precision_policy"] in ("float32", "mixed_bfloat16")
    summary = results["summary"]["lecture"]
    assert summary["lecture:1"]["reached"] == "1/1" and summary["lecture:1"]["time_ratio"] == 1.0
    assert summary["fast:1"]["best_accuracy_mean"] == fast["test_accuracy"][0]
    assert results["budget"]["recipes"]["fast:1"]["per_seed"] == fast["test_accuracy"]
    assert f"({lecture['test_accuracy'][-1]:.4f}, mean of 1 seeds after 1 epochs)" in result.stdout
    assert has_row(output.with_suffix(".md").read_text(), "fast:1")


@pytest.mark.parametrize("extra", [("--subjects", "fit"), ("--target", "0.5", "--seeds", "1")], ids=["bench", "target"])
def test_an_output_in_a_read_only_place_is_refused_before_measuring(fashion_lab, small_tmpfs, extra):
    remount_read_only(small_tmpfs)
    output = small_tmpfs / "results" / "latest"
    result = run_invoke("bench", "--output", str(output), "--data-dir", str(fashion_lab / "data"), "--limit", "600",
                        "--epochs", "2", "--repeats", "1", *extra)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: --output {output}: cannot write the results in {output.parent} "
                                     f"(Read-only file system); give --output a path in a folder you can write")
    assert "[bench]" not in result.stdout  # nothing was measured


def test_precision_step_benchmark_prints_both_policies_and_their_ratio():
    """`python benchmarks/precision_step.py`, as benchmarks/NOTES.md runs it, on a few small steps."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "benchmarks/precision_step.py", "--model", "sequential_add", "--batch", "8",
                             "--steps", "3", "--rounds", "1"], cwd=root, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr[-2000:]
    line = result.stdout.strip().splitlines()[-1]
    found = re.fullmatch(r"sequential_add batch 8: float32 ([\d,]+) images/s, mixed_bfloat16 ([\d,]+) images/s, "
                         r"ratio ([\d.]+)x", line)
    assert found, line
    float32, bfloat16, ratio = (float(value.replace(",", "")) for value in found.groups())
    assert float32 > 0 and bfloat16 > 0
    assert ratio == pytest.approx(bfloat16 / float32, abs=0.01)  # the rates are printed rounded to whole images/s
