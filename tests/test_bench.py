"""The benchmark runner: its arithmetic on made-up measurements, its errors, and one small real run."""

import json

import pytest

from classifier.bench import markdown_table, numerics_cost, numerics_cost_table, run_benchmark, summarise
from classifier.config import UserError


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
