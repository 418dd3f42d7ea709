"""Compare finished run folders without retraining: did they come out the same, and if not, why.

    invoke compare runs/REFERENCE runs/STUDENT
    invoke compare runs/REFERENCE runs/STUDENT --tolerance 0.01
    invoke compare runs/REFERENCE submissions/
    invoke compare runs/REFERENCE alice.zip --more bob.zip --more runs/carol-run

A lecturer makes a reference run with `--numerics portable` and hands its
folder out; a student runs the same command and compares their folder with it.
Two folders: the evidence, one line per kind (framework, settings, data,
machine, software), then one verdict (classifier/machinery/judge.py):
IDENTICAL (exit 0), WITHIN TOLERANCE (exit 0) or DIFFERENT (exit 1).
A file changed since the run finished, a folder that is not a finished run
and the same folder twice are one line, exit 2, and nothing is judged.

A class at once: a folder of handed-in run folders and zips, a zip, or more
runs with --more print one table, a row per run (classifier/machinery/handins.py):
its verdict, the largest test-metric difference and what differs. Exit 0 only
if every run is IDENTICAL or WITHIN TOLERANCE; a refused hand-in (a damaged or
foreign zip, an unfinished run) is a REFUSED row saying why, the others are still
judged, and the exit is 2; otherwise any DIFFERENT run makes it 1.

`invoke reproduce` retrains a run and judges the rerun with the same functions.
This module never imports TensorFlow.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from tabulate import tabulate

from classifier.config import UserError
from classifier.machinery.handins import exit_code, handins_in, is_handin_folder, judge_handin
from classifier.machinery.judge import EVIDENCE, Comparison, check_tolerance, compare_records, judge, load_finished_run


def print_table(comparison: Comparison, labels: tuple[str, str]) -> None:
    """The metrics and weights hashes side by side, with whether each is the same."""
    width = max(len(str(value)) for row in comparison.rows for value in row[1:])
    print(f"{'':16} {labels[0]:<{width}}  {labels[1]:<{width}}  same")
    for key, first, second in comparison.rows:
        print(f"{key:16} {str(first):<{width}}  {str(second):<{width}}  {'yes' if first == second else 'NO'}")


def print_evidence(comparison: Comparison) -> None:
    """One line per kind of evidence, with its verdict, and one indented line per difference."""
    verdicts = {
        "framework": "other framework: the runs trained with other libraries",
        "settings": "other settings: the runs trained something else",
        "data": "other data: the runs trained on other files",
        "machine": "other machine: bit-identical weights are not promised",
        "software": "other software: bit-identical weights are not promised",
    }
    for name in EVIDENCE:
        lines = getattr(comparison, name)
        print(f"{name:9} {verdicts[name] if lines else 'the same'}")
        for line in lines:
            print(f"  {line}")


def verdict(comparison: Comparison, tolerance: float, names: str) -> bool:
    """Print the one verdict line ("IDENTICAL: a vs b", ...) and return whether the runs agree (judge.judge)."""
    agrees, text = judge(comparison, tolerance)
    print(f"{text}: {names}")
    return agrees


def compare(run_a: str, run_b: str, more: list[str] = (), tolerance: float | None = None) -> int:
    """Compare finished runs and print the evidence and the verdict, or a class's table (see the module docstring).

    Args:
        run_a: the reference run folder.
        run_b: the run folder compared with it; or a zip, or a folder of run folders and zips (a table).
        more: further run folders or zips judged against run_a (a table).
        tolerance: the largest absolute difference of test loss, accuracy and
            argmax accuracy accepted where bit-identical weights are not
            promised (default judge.DEFAULT_TOLERANCE).

    Returns:
        The exit code: 0 if every verdict is IDENTICAL or WITHIN TOLERANCE, 1 if one is DIFFERENT, 2 if a
        hand-in in a table was refused.

    Raises:
        UserError: a reference (or with two folders, either folder) that is missing, not a run, unfinished,
            damaged or altered since it finished; the same folder twice; a negative tolerance.
    """
    tolerance = check_tolerance(tolerance)
    first = load_finished_run(Path(run_a))
    if more or Path(run_b).suffix.lower() == ".zip" or is_handin_folder(Path(run_b)):
        return _class_table(first, [run_b, *more], tolerance)
    if Path(run_b).exists() and Path(run_a).samefile(run_b):
        raise UserError(f"{run_a} and {run_b} are the same run folder, so there is nothing to compare; give "
                        f"another run folder, or retrain this one and compare: invoke reproduce {shlex.quote(run_a)}")
    comparison = compare_records(first, load_finished_run(Path(run_b)))
    print_table(comparison, ("A", "B"))
    print(f"\nA: {run_a}\nB: {run_b}\n")
    print_evidence(comparison)
    print()
    return 0 if verdict(comparison, tolerance, f"{run_a} vs {run_b}") else 1


def _class_table(reference: tuple[dict, dict], runs: list[str], tolerance: float) -> int:
    """One row per handed-in run (a folder of them is opened), then a count line; returns the exit code."""
    handins = [entry for run in runs
               for entry in (handins_in(Path(run)) if is_handin_folder(Path(run)) else [Path(run)])]
    rows = [judge_handin(reference, handin, tolerance) for handin in handins]
    print(tabulate([[row.name, row.verdict, row.largest, row.differs] for row in rows],
                   ["run", "verdict", "largest metric difference", "what differs (or why refused)"],
                   tablefmt="pipe", colalign=("left", "left", "right", "left"), disable_numparse=True))
    print()
    agreeing = sum(1 for row in rows if row.agrees)
    refused = sum(1 for row in rows if row.agrees is None)
    print(f"{agreeing} of {len(rows)} run(s) IDENTICAL or WITHIN TOLERANCE (tolerance {tolerance}), "
          f"{len(rows) - agreeing - refused} DIFFERENT, {refused} refused")
    return exit_code(rows)
