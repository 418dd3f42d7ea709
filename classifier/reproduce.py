"""Re-run a finished run from its manifest and say whether it came out the same.

    invoke reproduce runs/20261126-231502-fashion_mnist-sequential_add-fit

What is promised: on the same hardware and software, the rerun's metrics and
final weights are bit-identical. Where the environment differs from the one
the manifest recorded, the differences are listed before the rerun starts,
since any of them may change the numbers. The rerun uses the run's numerics
mode; on another kind of machine (another L1 cache size, an older CPU, under
"fastest" another core count: see classifier/numerics.py) it says so and
compares the metrics within a tolerance instead of the weights hash:

    invoke reproduce runs/20261126-231502-fashion_mnist-sequential_add-fit --tolerance 0.01
"""

from __future__ import annotations

from pathlib import Path

from classifier import numerics
from classifier.config import UserError, make_config
from classifier.runs import environment_record, read_object, read_run_files

# Keys of environment_record() whose change can change the numbers, in the order shown.
_COMPARED = ("python", "tensorflow", "tensorflow_build", "torch", "torch_build", "torch_devices", "torch_threads",
             "cpu", "cpu_count", "devices", "numerics_env", "container_image", "git")
_METRICS = ("loss", "accuracy", "argmax_accuracy")

# The metrics' largest accepted absolute difference on another kind of machine.
# Measured (benchmarks/results/numerics_machines_pre_redesign.md): across ten
# emulated machines the test loss of the README's run spread by 0.010 and the
# accuracy by 0.004; twice that is accepted.
DEFAULT_TOLERANCE = 0.02


def environment_differences(recorded: dict, current: dict) -> list[str]:
    """One line per difference between a manifest's environment and this one."""
    lines = []
    for key in _COMPARED:
        before, now = recorded.get(key), current.get(key)
        if isinstance(before, dict) and isinstance(now, dict):
            # Name only the entries that changed, e.g. numerics_env.TF_ENABLE_ONEDNN_OPTS.
            for sub in sorted(set(before) | set(now)):
                if before.get(sub) != now.get(sub):
                    lines.append(f"{key}.{sub}: {before.get(sub)} -> {now.get(sub)}")
        elif before != now:
            lines.append(f"{key}: {before} -> {now}")
    old_packages, new_packages = recorded.get("packages", {}), current.get("packages", {})
    for name in sorted(set(old_packages) | set(new_packages)):
        if old_packages.get(name) != new_packages.get(name):
            lines.append(f"package {name}: {old_packages.get(name, 'absent')} -> {new_packages.get(name, 'absent')}")
    return lines


def load_finished_run(run_dir: Path) -> tuple[dict, dict]:
    """(manifest, metrics) of a complete run; UserError for anything else."""
    run_dir = Path(run_dir)
    if not (run_dir / "manifest.json").is_file():
        raise UserError(f"{run_dir} is not a run folder (no manifest.json in it)")
    # Damaged or hand-edited files are refused here, before the rerun starts.
    _, manifest = read_run_files(run_dir)
    if manifest.get("status") != "complete" or not (run_dir / "metrics.json").is_file():
        raise UserError(f"{run_dir} did not finish (status {manifest.get('status')!r}); "
                        f"finish it with: invoke train --resume {run_dir}")
    if not isinstance(manifest.get("config"), dict):
        raise UserError(f"{run_dir / 'manifest.json'} is damaged (no config in it); "
                        "put back the file the run wrote")
    return manifest, read_object(run_dir / "metrics.json")


def reproduce(run_dir: str, runs_dir: str = "", tolerance: float | None = None) -> bool:
    """Re-run `run_dir` with its recorded config and numerics mode and compare.

    On the same kind of machine (numerics.kind_differences: nothing that
    changes the arithmetic under the run's mode) the rerun must be
    bit-identical. On another kind it cannot be, so the machine differences
    are named and the metrics are compared within `tolerance` instead.

    Args:
        run_dir: a complete run folder.
        runs_dir: where the rerun's folder goes (default: beside the original).
        tolerance: the largest absolute difference of test loss, accuracy and
            argmax accuracy accepted on another kind of machine (default DEFAULT_TOLERANCE).

    Returns:
        Same kind: whether every compared metric and the weights hash are
        bit-identical. Another kind: whether every metric is within the tolerance.
    """
    from classifier.commands import train_command

    tolerance = DEFAULT_TOLERANCE if tolerance is None else tolerance
    if not tolerance >= 0:
        raise UserError(f"--tolerance must be 0 or more, got {tolerance}")
    original = Path(run_dir)
    manifest, metrics = load_finished_run(original)
    config = make_config(**{**manifest["config"], "runs_dir": runs_dir or str(original.parent)})
    # The run's own numerics mode, before TensorFlow starts (environment_record loads it).
    numerics.apply(config.numerics)
    if config.trainer == "torch":
        from classifier.torch_run import torch_environment

        current = {**environment_record(tensorflow=False), **torch_environment()}
    else:
        current = environment_record()
    differences = environment_differences(manifest.get("environment", {}), current)
    if differences:
        print("The environment differs from the one recorded; the numbers may differ because of:")
        for line in differences:
            print(f"  {line}")
    else:
        print("Same environment as recorded: the rerun should be bit-identical.")
    other_kind = numerics.kind_differences(config.numerics, manifest.get("numerics", {}).get("machine"),
                                           numerics.machine_kind())
    if other_kind:
        print(f"Another kind of machine than the run's under numerics {config.numerics} ({'; '.join(other_kind)}): "
              f"bit-identical weights are not promised; the metrics must agree within {tolerance}.")
    rerun = train_command(config)
    rerun_manifest, rerun_metrics = load_finished_run(rerun)

    rows = [(key, metrics[key], rerun_metrics[key]) for key in _METRICS]
    rows.append(("weights_sha256", manifest["weights_sha256"], rerun_manifest["weights_sha256"]))
    width = max(len(str(value)) for _, value, _ in rows)
    print(f"\n{'':16} {'original':<{width}}  {'rerun':<{width}}  same")
    for key, before, after in rows:
        print(f"{key:16} {str(before):<{width}}  {str(after):<{width}}  {'yes' if before == after else 'NO'}")
    identical = all(before == after for _, before, after in rows)
    if identical or not other_kind:
        print(f"\n{'IDENTICAL' if identical else 'DIFFERENT'}: {original} vs {rerun}")
        return identical
    largest = max(abs(before - after) for _, before, after in rows[:-1])
    within = largest <= tolerance
    print(f"\n{'WITHIN TOLERANCE' if within else 'DIFFERENT'}: largest metric difference {largest:.6f} "
          f"{'<=' if within else '>'} {tolerance} (another kind of machine): {original} vs {rerun}")
    return within
