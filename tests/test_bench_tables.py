"""classifier/machinery/bench_tables.py: the benchmark's Markdown tables, as tabulate writes them."""

from classifier.machinery.bench_stats import numerics_cost, summarise, summarise_runs
from classifier.machinery.bench_tables import (
    markdown_table,
    numerics_cost_table,
    pipe_table,
    time_to_accuracy_report,
)
from test_bench_stats import lecture_and_fast, run


def cells(table: str) -> list[list[str]]:
    """A Markdown table's rows (heading first, the alignment row left out), each as its stripped cells."""
    rows = [line.strip().strip("|").split("|") for line in table.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row] for index, row in enumerate(rows) if index != 1]


def test_a_pipe_table_keeps_the_cells_as_formatted_and_aligns_numbers_right():
    table = pipe_table(["recipe", "seconds", "per seed"], [["fast", "1,000", "0.9375, none"]], last_left=True)
    lines = table.splitlines()
    assert lines[1].startswith("|:") and lines[1].split("|")[2].endswith(":") and lines[1].endswith("-|")
    assert cells(table) == [["recipe", "seconds", "per seed"], ["fast", "1,000", "0.9375, none"]]
    assert table.endswith("|\n")


def test_markdown_table_has_a_row_per_subject_and_only_the_columns_every_row_has():
    summary = summarise({"reference": [run([3.0, 2.0])], "fit": [run([3.0, 1.0], train_flops_per_image=25_000_000)]},
                        peak=100.0)
    rows = cells(markdown_table(summary))
    assert rows[0][:3] == ["subject", "train images/s", "train ratio"]
    assert "train GFLOP/s" in rows[0] and "share of peak" in rows[0]
    assert rows[1][:3] == ["reference", "500", "1.00x"] and rows[2][:3] == ["fit", "1,000", "2.00x"]
    # Without a peak no row has a share of it, so the column is left out.
    assert "share of peak" not in cells(markdown_table(summarise({"fit": [run([3.0, 1.0])]})))[0]


def test_numerics_cost_table_rows():
    summary = summarise({"fit [fastest]": [run([9.0, 2.0, 2.0], accuracy=0.80)],
                         "fit [portable]": [run([9.0, 2.5, 2.5], eval_seconds=4.0, accuracy=0.81)]})
    rows = cells(numerics_cost_table(numerics_cost(summary, ["fit"], ["fastest", "portable"])))
    assert rows[1] == ["fit: portable vs fastest", "0.80x", "0.50x", "0.8000", "0.8100", "+0.0100"]


def test_time_to_accuracy_report_has_a_table_per_target_and_the_budget():
    results = summarise_runs(lecture_and_fast(), (0.95,), True, baseline="lecture", budget=12)
    report = time_to_accuracy_report({"settings": {"targets": [0.95, "lecture"]}, **results})
    assert "## Time to 95% test accuracy" in report
    assert "## Time to the lecture's final test accuracy (0.9062, mean of 2 seeds after 3 epochs)" in report
    assert "## Test accuracy within 12 s of training" in report
    rows = cells(report)
    assert ["recipe", "reached 95%", "s to 95% (mean ± sd)", "epochs", "time / lecture's",
            "best test accuracy (mean)"] in rows
    assert ["fast:3", "1/3", "16.0 ± 0.0", "3.0", "not reached", "0.9323"] in rows  # the lecture never reached 95%
    assert ["fast:3", "2/3", "11.5 ± 4.9", "2.5", "0.359x", "0.9323"] in rows
    assert ["fast:3", "0.9062", "2/3", "0.9375, 0.8750, none"] in rows
