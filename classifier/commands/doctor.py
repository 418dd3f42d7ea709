"""`invoke doctor`: check the environment and say, for each problem, how to fix it.

    invoke doctor              # exit 0 when nothing is broken, 1 otherwise

Works on the host, in the container and in CI. The checks themselves live in
classifier/machinery/checks.py; this is their order and the table they print.
"""

from __future__ import annotations

from pathlib import Path

from classifier.machinery import checks as environment
from classifier.machinery.checks import FAIL, WARN, Check


def diagnose(data_dir: Path, runs_dir: Path) -> list[Check]:
    """Every check, in the order a person would fix them."""
    return [
        *environment.check_versions(),
        *environment.check_tensorflow(),
        *environment.check_task_modules(),
        *environment.check_torch(),
        environment.check_graphviz(),
        *environment.check_datasets(data_dir),
        *environment.check_disk(data_dir, runs_dir),
        *environment.check_host_docker(),
    ]


def report(checks: list[Check]) -> bool:
    """Print the checks as a table; True when none failed."""
    width = max(len(check.name) for check in checks)
    for check in checks:
        print(f"{check.status:<4}  {check.name:<{width}}  {check.detail}")
        if check.fix and check.status in (WARN, FAIL):
            print(f"      {'':<{width}}  fix: {check.fix}")
    failed = [check for check in checks if check.status == FAIL]
    print(f"\n{len(failed)} problem(s) found" if failed else "\nno problems found")
    return not failed
