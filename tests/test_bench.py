"""The benchmark runner: its arithmetic on made-up measurements, its errors, and one small real run."""

import json
import os

import pytest

from classifier.commands.bench import (
    markdown_table,
    numerics_cost,
    numerics_cost_table,
    run_benchmark,
    run_time_to_accuracy,
    summarise,
    summarise_runs,
    summarise_time_to_accuracy,
    time_to_accuracy_report,
    time_to_accuracy_table,
)
from classifier.config import UserError
from conftest import remount_read_only, run_invoke


def _run(epoch_seconds, eval_seconds=2.0, accuracy=0.8, rss=500.0):
    return {"train_images": 1000, "epoch_seconds": epoch_seconds, "train_seconds": sum(epoch_seconds),
            "eval_images": 400, "eval_seconds": eval_seconds, "test_accuracy": accuracy, "val_accuracy": accuracy,
            "peak_rss_mib": rss}


def test_summary_leaves_out_the_first_epoch_takes_medians_and_ratios():
    measurements = {
        # The 9-second first epochs (tracing) must not count.
        "reference": [_run([9.0, 2.0, 2.0]), _run([9.0, 2.0, 2.0]), _run([9.0, 4.0, 4.0], rss=900.0)],
        "tape": [_run([9.0, 1.0, 1.0], eval_seconds=1.0), _run([9.0, 1.0, 1.0], eval_seconds=1.0),
                 _run([9.0, 5.0, 5.0], eval_seconds=4.0)],
    }
    summary = summarise(measurements)
    assert summary["reference"]["seconds_per_epoch"] == 2.0
    assert summary["reference"]["train_images_per_second"] == 500.0
    assert summary["reference"]["first_epoch_seconds"] == 9.0
    assert summary["reference"]["peak_rss_mib"] == 500.0
    assert summary["tape"]["train_images_per_second"] == 1000.0
    assert summary["tape"]["train_speedup"] == 2.0
    assert summary["tape"]["eval_speedup"] == 2.0
    assert summary["reference"]["train_speedup"] == 1.0
    # "best": the fastest steady epoch of any repeat, where the median is the typical one.
    noisy = summarise({"reference": [_run([9.0, 4.0, 2.0])], "tape": [_run([9.0, 1.0, 3.0])]})
    assert noisy["tape"]["train_speedup"] == 1.5
    assert noisy["reference"]["best_train_images_per_second"] == 500.0
    assert noisy["tape"]["best_train_images_per_second"] == 1000.0
    assert noisy["tape"]["best_train_speedup"] == 2.0


def test_markdown_table_has_a_row_per_subject():
    summary = summarise({"reference": [_run([3.0, 2.0])], "fit": [_run([3.0, 1.0])]})
    table = markdown_table(summary)
    lines = table.splitlines()
    assert lines[0].startswith("| subject | train images/s | train ratio |")
    assert lines[2].startswith("| reference | 500 | 1.00x |")
    assert lines[3].startswith("| fit | 1,000 | 2.00x |")


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 1}, "epochs must be at least 2"),
    ({"repeats": 0}, "repeats must be at least 1"),
    ({"subjects": ("reference", "keras2")}, "unknown benchmark subject 'keras2'"),
    ({"numerics_modes": ("fastest", "exact")}, "unknown numerics mode 'exact'; accepted: fastest, portable"),
])
def test_bad_settings_are_refused_before_any_work(kwargs, message):
    with pytest.raises(UserError, match=message):
        run_benchmark(**kwargs)


def test_numerics_cost_is_each_mode_against_the_first():
    summary = summarise({
        "fit [fastest]": [_run([9.0, 2.0, 2.0], accuracy=0.80)],
        "fit [portable]": [_run([9.0, 2.5, 2.5], eval_seconds=4.0, accuracy=0.81)],
    }, baseline="reference [fastest]")
    cost = numerics_cost(summary, ["fit"], ["fastest", "portable"])
    assert list(cost) == ["fit: portable vs fastest"]
    figures = cost["fit: portable vs fastest"]
    assert figures["train_ratio"] == pytest.approx(0.8) and figures["eval_ratio"] == pytest.approx(0.5)
    assert figures["accuracy_difference"] == pytest.approx(0.01)
    assert "| fit: portable vs fastest | 0.80x | 0.50x | 0.8000 | 0.8100 | +0.0100 |" in numerics_cost_table(cost)


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
    assert "| reference |" in markdown and "| tape |" in markdown and "Machine:" in markdown
    assert not list(output.parent.glob(".tmp-*"))


@pytest.mark.slow
def test_numerics_cost_of_the_fast_recipe_is_measured(fashion_lab, tmp_path):
    output = tmp_path / "cost"
    results = run_benchmark(limit=500, epochs=2, repeats=1, output=str(output), data_dir=str(fashion_lab / "data"),
                            subjects=("fast",), numerics_modes=("fastest", "portable"))
    assert set(results["summary"]) == {"fast [fastest]", "fast [portable]"}
    figures = results["numerics_cost"]["fast: portable vs fastest"]
    assert figures["train_ratio"] > 0 and abs(figures["accuracy_difference"]) < 0.5
    assert "| fast: portable vs fastest |" in output.with_suffix(".md").read_text()


def test_tensorboard_rows_cost_time_but_change_no_result(fashion_lab, tmp_path):
    results = run_benchmark(limit=500, epochs=2, repeats=1, output=str(tmp_path / "tb"),
                            data_dir=str(fashion_lab / "data"), subjects=("fit", "fit+tensorboard"))
    plain, logged = results["summary"]["fit"], results["summary"]["fit+tensorboard"]
    # The summaries read the epoch's logs only: the same weights, so the same test accuracy to the digit.
    assert logged["test_accuracy"] == plain["test_accuracy"]
    assert logged["train_images_per_second"] > 0
    assert "| fit+tensorboard |" in (tmp_path / "tb.md").read_text()


def _recipe_run(seconds, accuracy):
    return {"train_seconds": seconds, "test_accuracy": accuracy}


def test_time_to_accuracy_summary_means_spreads_and_ratios():
    summary = summarise_time_to_accuracy({
        "lecture": [_recipe_run([10, 20, 30], [0.8, 0.85, 0.9]), _recipe_run([10, 20, 30], [0.8, 0.9, 0.91])],
        "fast": [_recipe_run([5, 10], [0.92, 0.93]), _recipe_run([6, 12], [0.85, 0.9]),
                 _recipe_run([5, 10], [0.5, 0.6])],
    }, 0.9)
    assert summary["lecture"]["mean_seconds"] == 25.0 and summary["lecture"]["reached"] == "2/2"
    assert summary["lecture"]["spread_seconds"] == pytest.approx(7.0711, abs=1e-4)
    assert summary["fast"]["mean_seconds"] == 8.5 and summary["fast"]["reached"] == "2/3"
    assert summary["fast"]["time_ratio"] == pytest.approx(8.5 / 25.0)
    assert summary["fast"]["mean_epochs"] == 1.5
    table = time_to_accuracy_table(summary, 0.9)
    assert "| fast | 2/3 | 8.5 ± 4.9 | 1.5 | 0.340x |" in table
    # A second target is read off the same curves: only one fast run reaches 93%.
    higher = summarise_time_to_accuracy({"fast": [_recipe_run([5, 10], [0.92, 0.93]), _recipe_run([6, 12], [0.85, 0.9])]},
                                        0.93)
    assert higher["fast"]["reached"] == "1/2" and higher["fast"]["mean_seconds"] == 10.0


def test_the_lecture_target_is_its_mean_final_accuracy_and_the_budget_reads_the_curves():
    # Accuracies that are exact binary fractions, so that a mean lands exactly on a value a curve holds.
    lecture = [_recipe_run([10, 20, 30], [0.75, 0.8125, 0.875]), _recipe_run([12, 22, 34], [0.8125, 0.875, 0.9375])]
    fast = [_recipe_run([4, 8, 16], [0.875, 0.9375, 0.96875]), _recipe_run([5, 9, 15], [0.75, 0.875, 0.9375]),
            _recipe_run([40, 80], [0.875, 0.890625])]
    results = summarise_runs({"lecture": lecture, "fast:3": fast}, (0.95,), True, baseline="lecture", budget=12)
    resolved = results["lecture_target"]
    assert resolved == {"value": 0.90625, "seconds": 32.0, "epochs": 3, "seeds": 2, "recipe": "lecture"}
    figures = results["summary"]["lecture"]
    # The lecture's own seeds: one reaches their mean (at 34 s), one does not; fast: two of three, at 8 and 15 s.
    assert figures["lecture"]["reached"] == "1/2" and figures["lecture"]["mean_seconds"] == 34.0
    assert figures["fast:3"]["reached"] == "2/3" and figures["fast:3"]["mean_seconds"] == 11.5
    # Against the lecture's whole training time for its 3 epochs (32 s), not its time to its own mean.
    assert figures["fast:3"]["time_ratio"] == 11.5 / 32.0
    assert results["summary"]["0.95"]["fast:3"]["reached"] == "1/3"
    assert results["summary"]["0.95"]["fast:3"]["mean_seconds"] == 16
    # Within 12 s: the last epoch that ended by then (12 s itself counts); none where the first took longer.
    assert results["budget"]["recipes"]["fast:3"] == {"per_seed": [0.9375, 0.875, None], "mean": 0.90625,
                                                      "seeds_with_value": "2/3"}
    assert results["budget"]["recipes"]["lecture"]["per_seed"] == [0.75, 0.8125]
    report = time_to_accuracy_report({"settings": {"targets": [0.95, "lecture"]}, **results})
    assert "## Time to 95% test accuracy" in report
    assert "## Time to the lecture's final test accuracy (0.9062, mean of 2 seeds after 3 epochs)" in report
    assert "| fast:3 | 2/3 | 11.5 ± 4.9 | 2.5 | 0.359x | 0.9323 |" in report
    assert "| fast:3 | 0.9062 | 2/3 | 0.9375, 0.8750, none |" in report


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
    assert "| lecture | 1/1 |" in output.with_suffix(".md").read_text()


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
    assert "| fast:1 |" in output.with_suffix(".md").read_text()


def test_forward_flops_of_the_lecture_network():
    from classifier.commands.bench import forward_flops
    from classifier.machinery.recipes import build_model

    model = build_model("functional", (28, 28, 1), 10)
    # conv1 28x28x32 outputs x 3x3x1, conv2 14x14x64 x 3x3x32, dense 3136x100 and 100x10; 2 FLOP per multiply-add.
    expected = 2 * (28 * 28 * 32 * 9 + 14 * 14 * 64 * 9 * 32 + 3136 * 100 + 100 * 10)
    assert forward_flops(model) == expected == 8_306_128


@pytest.mark.parametrize("vendor, flags, per_cycle", [
    ("AuthenticAMD", "fpu sse2 avx avx2 fma", 32),
    ("AuthenticAMD", "avx avx2 fma avx512f", 32),
    ("GenuineIntel", "avx avx2 fma avx512f", 64),
    ("GenuineIntel", "sse2 avx", 16),
])
def test_peak_from_cpu_flags_and_clock(vendor, flags, per_cycle):
    from classifier.commands.bench import peak_gflops

    cpuinfo = f"processor\t: 0\nvendor_id\t: {vendor}\ncpu MHz\t\t: 2500.000\nflags\t\t: {flags}\n"
    peak = peak_gflops(cpuinfo, cores=2)
    assert peak["flop_per_cycle"] == per_cycle
    assert peak["gflops"] == pytest.approx(2 * 2.5 * per_cycle)


def test_summary_gflops_and_share_of_peak():
    lab = dict(_run([3.0, 2.0]), train_flops_per_image=25_000_000)
    summary = summarise({"reference": [_run([3.0, 2.0])], "tape": [lab]}, peak=100.0)
    # 1000 images / 2 s = 500 images/s x 25 MFLOP = 12.5 GFLOP/s, 12.5% of 100.
    assert summary["reference"]["gflops"] == pytest.approx(12.5)
    assert summary["tape"]["peak_share"] == pytest.approx(0.125)
    assert "| train GFLOP/s | share of peak |" in markdown_table(summary)


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
