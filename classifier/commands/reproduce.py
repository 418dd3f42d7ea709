"""Re-run a finished run from its manifest and say whether it came out the same.

    invoke reproduce runs/20261126-231502-fashion_mnist-sequential_add-fit

What is promised: on the same kind of machine and software, the rerun's
metrics and final weights are bit-identical. Before the rerun starts, it says
which it expects: either the same environment and kind of machine as recorded
(bit-identical), or the differences (other rcpps/rsqrtps tables, an older CPU,
under "fastest" another core count, see classifier/machinery/numerics.py; other
packages), any of which may change the numbers, and then the metrics are
compared within a tolerance instead of the weights hash:

    invoke reproduce runs/20261126-231502-fashion_mnist-sequential_add-fit --tolerance 0.01

The rerun is judged by classifier/machinery/judge.py, as `invoke compare` judges two folders.
A notebook's run (lab.record_run) is rerun as the `invoke train` it names:
its settings, in the numerics mode its recorded variables hold.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from classifier.machinery import numerics
from classifier.commands.compare import print_table, verdict
from classifier.machinery.judge import (check_tolerance, compare_records, load_finished_run, machine_differences,
                                        recorded_mode, software_differences)
from classifier.config import make_config
from classifier.machinery.runs import environment_record

def reproduce(run_dir: str, runs_dir: str = "", tolerance: float | None = None) -> bool:
    """Re-run `run_dir` with its recorded config and numerics mode and compare.

    On the same kind of machine and software (judge.machine_differences and
    software_differences find nothing) the rerun must be bit-identical.
    Otherwise it cannot be promised, so the differences are named and the
    metrics are compared within `tolerance` instead.

    Args:
        run_dir: a complete run folder.
        runs_dir: where the rerun's folder goes (default: beside the original).
        tolerance: the largest absolute difference of test loss, accuracy and
            argmax accuracy accepted where bits are not promised (default judge.DEFAULT_TOLERANCE).

    Returns:
        Whether the verdict is IDENTICAL or WITHIN TOLERANCE (judge.judge).
    """
    from classifier.commands.train import train_command

    tolerance = check_tolerance(tolerance)
    original = Path(run_dir)
    manifest, metrics = load_finished_run(original)
    # A notebook's config says the default mode whatever lab.use_numerics() applied: the rerun takes the one it ran.
    config = make_config(**{**manifest["config"], "runs_dir": runs_dir or str(original.parent),
                            "numerics": recorded_mode(manifest)})
    # The run's own numerics mode, before TensorFlow starts (environment_record loads it).
    numerics.apply(config.numerics)
    if config.trainer == "torch":
        from classifier.machinery.torch_runs import torch_environment

        current = {**environment_record(tensorflow=False), **torch_environment()}
    else:
        current = environment_record()
    _expect(manifest, current, tolerance)
    rerun = train_command(config)
    comparison = compare_records((manifest, metrics), load_finished_run(rerun))
    print()
    print_table(comparison, ("original", "rerun"))
    print(f"\nThe evidence side by side: invoke compare {shlex.quote(str(original))} {shlex.quote(str(rerun))}\n")
    return verdict(comparison, tolerance, f"{original} vs {rerun}")


def _expect(manifest: dict, current: dict, tolerance: float) -> None:
    """Say, before the rerun, the one thing to expect of it and why."""
    mode = recorded_mode(manifest)
    recorded = manifest.get("environment", {})
    machine = machine_differences((mode, mode), (recorded, current),
                                  ((manifest.get("numerics") or {}).get("machine"), numerics.machine_kind()))
    software = software_differences((recorded, current))
    if not machine and not software:
        print("Same environment and kind of machine as recorded: the rerun should be bit-identical.")
        return
    print(f"Not the run's environment and kind of machine under numerics {mode}: bit-identical weights are "
          f"not promised; the metrics must agree within {tolerance}. What differs:")
    for line in [f"machine: {line}" for line in machine] + [f"software: {line}" for line in software]:
        print(f"  {line}")
