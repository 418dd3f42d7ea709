"""classifier/machinery/bench_stats.py: the benchmark's arithmetic on made-up measurements."""

import pytest

from classifier.config import UserError
from classifier.machinery.bench_stats import (
    accuracy_within,
    numerics_cost,
    parse_recipes,
    parse_targets,
    row_name,
    summarise,
    summarise_runs,
    summarise_time_to_accuracy,
)


def run(epoch_seconds, eval_seconds=2.0, accuracy=0.8, rss=500.0, **extra):
    """One child's measurement as classifier.machinery.measure records it: 1,000 training and 400 test images."""
    return {"train_images": 1000, "epoch_seconds": epoch_seconds, "train_seconds": sum(epoch_seconds),
            "eval_images": 400, "eval_seconds": eval_seconds, "test_accuracy": accuracy, "val_accuracy": accuracy,
            "peak_rss_mib": rss, **extra}


def recipe_run(seconds, accuracy):
    """One seed's time-to-accuracy curve: cumulative training seconds and test accuracy per epoch."""
    return {"train_seconds": seconds, "test_accuracy": accuracy}


def test_summary_leaves_out_the_first_epoch_takes_medians_and_ratios():
    measurements = {
        # The 9-second first epochs (tracing) must not count.
        "reference": [run([9.0, 2.0, 2.0]), run([9.0, 2.0, 2.0]), run([9.0, 4.0, 4.0], rss=900.0)],
        "tape": [run([9.0, 1.0, 1.0], eval_seconds=1.0), run([9.0, 1.0, 1.0], eval_seconds=1.0),
                 run([9.0, 5.0, 5.0], eval_seconds=4.0)],
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
    noisy = summarise({"reference": [run([9.0, 4.0, 2.0])], "tape": [run([9.0, 1.0, 3.0])]})
    assert noisy["tape"]["train_speedup"] == 1.5
    assert noisy["reference"]["best_train_images_per_second"] == 500.0
    assert noisy["tape"]["best_train_images_per_second"] == 1000.0
    assert noisy["tape"]["best_train_speedup"] == 2.0


def test_summary_gflops_and_share_of_peak():
    lab = run([3.0, 2.0], train_flops_per_image=25_000_000)
    summary = summarise({"reference": [run([3.0, 2.0])], "tape": [lab]}, peak=100.0)
    # 1000 images / 2 s = 500 images/s x 25 MFLOP = 12.5 GFLOP/s, 12.5% of 100; the reference counts the lab's network.
    assert summary["reference"]["gflops"] == pytest.approx(12.5)
    assert summary["tape"]["peak_share"] == pytest.approx(0.125)
    # Without a peak there is no share of it.
    assert "peak_share" not in summarise({"tape": [lab]})["tape"]


def test_rows_are_named_by_mode_only_where_several_are_measured():
    assert row_name("fit", "fastest", ("fastest",)) == "fit"
    assert row_name("fit", "portable", ("fastest", "portable")) == "fit [portable]"


def test_numerics_cost_is_each_mode_against_the_first():
    summary = summarise({
        "fit [fastest]": [run([9.0, 2.0, 2.0], accuracy=0.80)],
        "fit [portable]": [run([9.0, 2.5, 2.5], eval_seconds=4.0, accuracy=0.81)],
    }, baseline="reference [fastest]")
    cost = numerics_cost(summary, ["fit"], ["fastest", "portable"])
    assert list(cost) == ["fit: portable vs fastest"]
    figures = cost["fit: portable vs fastest"]
    assert figures["train_ratio"] == pytest.approx(0.8) and figures["eval_ratio"] == pytest.approx(0.5)
    assert (figures["baseline_accuracy"], figures["accuracy"]) == (0.80, 0.81)
    assert figures["accuracy_difference"] == pytest.approx(0.01)


def test_time_to_accuracy_summary_means_spreads_and_ratios():
    summary = summarise_time_to_accuracy({
        "lecture": [recipe_run([10, 20, 30], [0.8, 0.85, 0.9]), recipe_run([10, 20, 30], [0.8, 0.9, 0.91])],
        "fast": [recipe_run([5, 10], [0.92, 0.93]), recipe_run([6, 12], [0.85, 0.9]),
                 recipe_run([5, 10], [0.5, 0.6])],
    }, 0.9)
    assert summary["lecture"]["mean_seconds"] == 25.0 and summary["lecture"]["reached"] == "2/2"
    assert summary["lecture"]["spread_seconds"] == pytest.approx(7.0711, abs=1e-4)
    assert summary["fast"]["mean_seconds"] == 8.5 and summary["fast"]["reached"] == "2/3"
    assert summary["fast"]["spread_seconds"] == pytest.approx(4.9497, abs=1e-4)
    assert summary["fast"]["time_ratio"] == pytest.approx(8.5 / 25.0)
    assert summary["fast"]["mean_epochs"] == 1.5
    # A second target is read off the same curves: only one fast run reaches 93%.
    higher = summarise_time_to_accuracy({"fast": [recipe_run([5, 10], [0.92, 0.93]), recipe_run([6, 12], [0.85, 0.9])]},
                                        0.93)
    assert higher["fast"]["reached"] == "1/2" and higher["fast"]["mean_seconds"] == 10.0


def lecture_and_fast():
    """Accuracies that are exact binary fractions, so that a mean lands exactly on a value a curve holds."""
    lecture = [recipe_run([10, 20, 30], [0.75, 0.8125, 0.875]), recipe_run([12, 22, 34], [0.8125, 0.875, 0.9375])]
    fast = [recipe_run([4, 8, 16], [0.875, 0.9375, 0.96875]), recipe_run([5, 9, 15], [0.75, 0.875, 0.9375]),
            recipe_run([40, 80], [0.875, 0.890625])]
    return {"lecture": lecture, "fast:3": fast}


def test_the_lecture_target_is_its_mean_final_accuracy_and_the_budget_reads_the_curves():
    results = summarise_runs(lecture_and_fast(), (0.95,), True, baseline="lecture", budget=12)
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


def test_no_seed_within_the_budget_has_no_mean():
    assert accuracy_within([recipe_run([20, 40], [0.8, 0.9])], 10) == {"per_seed": [None], "mean": None,
                                                                        "seeds_with_value": "0/1"}


def test_targets_and_recipes_are_parsed_sorted_and_checked():
    assert parse_targets(("0.935", "lecture", 0.91)) == ((0.91, 0.935), True)
    assert parse_recipes(("lecture", "fast:2", "fast")) == {"lecture": ("lecture", None), "fast:2": ("fast", 2),
                                                            "fast": ("fast", None)}
    with pytest.raises(UserError, match=r"--target 'nan': give test accuracies between 0 and 1"):
        parse_targets(("nan",))
    with pytest.raises(UserError, match="--recipes names fast:2 twice"):
        parse_recipes(("fast:2", "fast:2"))
