"""The same training on emulated machines, with and without the portable numerics mode.

Each row is one kind of machine, emulated on this one: the instruction set
oneDNN may use (ONEDNN_MAX_CPU_ISA), the cores the process may run on
(taskset), oneDNN's switches and TensorFlow's thread counts. Each cell is
the weights SHA-256 (first 8 hex digits), test loss and accuracy of the
reference run of docs/reproducibility.md (Fashion-MNIST, first 12,000 images, 2 epochs, seed 42, `fit`),
once per numerics mode.

    python benchmarks/numerics_machines.py --data-dir /tmp/lab-data --output benchmarks/results/numerics_machines
    python benchmarks/numerics_machines.py --limit 1200 --epochs 1     # a 5-minute version

About 40 s per cell on 2 quiet cores at the default size (2-3 minutes on a busy machine); 16 cells.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from classifier.machinery import numerics  # noqa: E402  (after the path fix above)
from classifier.machinery.files import write_json, write_text  # noqa: E402

# (what differs, taskset CPUs, the environment that differs): the table, plus a newer CPU.
MACHINES = (
    ("nothing (this machine: AMD EPYC, AVX2, 2 cores)", "0,1", {}, None),
    ("`ONEDNN_MAX_CPU_ISA=AVX512_CORE_AMX` (what a newer CPU allows; above the lab's cap)", "0,1",
     {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, None),
    ("a CPU with AVX only (`ONEDNN_MAX_CPU_ISA=AVX`, kept under the mode)", "0,1", {}, "AVX"),
    ("one core (`taskset -c 0`)", "0", {}, None),
    ("`TF_ENABLE_ONEDNN_OPTS=0`", "0,1", {"TF_ENABLE_ONEDNN_OPTS": "0"}, None),
    ("`TF_ENABLE_ONEDNN_OPTS=0`, one core", "0", {"TF_ENABLE_ONEDNN_OPTS": "0"}, None),
    ("`ONEDNN_MAX_CPU_ISA=AVX2`, `TF_NUM_INTRAOP_THREADS=4`, `TF_NUM_INTEROP_THREADS=1`, two cores", "0,1",
     {"ONEDNN_MAX_CPU_ISA": "AVX2", "TF_NUM_INTRAOP_THREADS": "4", "TF_NUM_INTEROP_THREADS": "1"}, None),
    ("the same, one core", "0",
     {"ONEDNN_MAX_CPU_ISA": "AVX2", "TF_NUM_INTRAOP_THREADS": "4", "TF_NUM_INTEROP_THREADS": "1"}, None),
)


def train_on(cpus: str, environ: dict, ceiling: str | None, mode: str, args) -> dict:
    """One `invoke train` under `mode` as the emulated machine; its hash, loss, accuracy and images/s.

    With a `ceiling` (the CPU's own highest instruction set) the mode's
    settings are applied here and the ceiling after them, since no mode can
    give a CPU instructions it lacks; the child then runs as "fastest", which
    changes nothing further.
    """
    base = {key: value for key, value in os.environ.items() if key not in numerics.RECORDED}
    if ceiling:
        environ = {**environ, **numerics.settings(mode), "ONEDNN_MAX_CPU_ISA": ceiling}
        mode = "fastest"
    with tempfile.TemporaryDirectory(prefix="numerics-") as runs:
        command = ["taskset", "-c", cpus, sys.executable, "-m", "invoke", "train", "--dataset", "fashion_mnist",
                   "--limit", str(args.limit), "--epochs", str(args.epochs), "--seed", "42", "--trainer", "fit",
                   "--numerics", mode, "--runs-dir", runs]
        if args.data_dir:
            command += ["--data-dir", args.data_dir]
        result = subprocess.run(command, cwd=PROJECT_ROOT, env={**base, **environ}, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"training failed ({cpus}, {environ}, {mode}): {result.stderr.strip()[-2000:]}")
        run_dir = next(Path(runs).iterdir())
        manifest = json.loads((run_dir / "manifest.json").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text())
        timings = json.loads((run_dir / "timings.json").read_text())
    return {"weights_sha256": manifest["weights_sha256"], "loss": metrics["loss"], "accuracy": metrics["accuracy"],
            "train_images_per_second": timings["train_images_per_second"]}


def markdown(rows: list[dict], modes: list[str]) -> str:
    """The table: one row per machine, per mode its hash, test loss and accuracy."""
    header = "| what differed | " + " | ".join(f"{mode}: weights SHA-256 | test loss | accuracy" for mode in modes) + " |"
    lines = [header, "|---|" + "---|---:|---:|" * len(modes)]
    for row in rows:
        cells = []
        for mode in modes:
            cell = row[mode]
            cells += [f"`{cell['weights_sha256'][:8]}`", f"{cell['loss']:.5f}", f"{cell['accuracy']:.4f}"]
        lines.append(f"| {row['machine']} | " + " | ".join(cells) + " |")
    for mode in modes:
        distinct = len({row[mode]["weights_sha256"] for row in rows})
        losses = [row[mode]["loss"] for row in rows]
        accuracies = [row[mode]["accuracy"] for row in rows]
        lines.append(f"\n{mode}: {distinct} distinct model(s) on {len(rows)} machines; test loss spread "
                     f"{max(losses) - min(losses):.5f}, accuracy spread {max(accuracies) - min(accuracies):.4f}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=12000, help="first N training images (default 12000)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs (default 2)")
    parser.add_argument("--data-dir", default="", help="dataset cache holding fashion_mnist/")
    parser.add_argument("--modes", default="fastest,portable", help="comma-separated numerics modes")
    parser.add_argument("--rows", default="", help="only these machines, separated by | (default: all)")
    parser.add_argument("--output", default="", help="path without suffix for .json and .md (default: print only)")
    args = parser.parse_args()
    modes = args.modes.split(",")
    rows = []
    for machine, cpus, environ, ceiling in MACHINES:
        if args.rows and machine not in args.rows.split("|"):
            continue
        row = {"machine": machine, "cpus": cpus, "environment": environ, "cpu_ceiling": ceiling}
        for mode in modes:
            row[mode] = train_on(cpus, environ, ceiling, mode, args)
            print(f"{machine} [{mode}]: {row[mode]['weights_sha256'][:8]} loss {row[mode]['loss']:.10f} "
                  f"accuracy {row[mode]['accuracy']:.4f}", flush=True)
        rows.append(row)
    table = markdown(rows, modes)
    print(table)
    if args.output:
        target = Path(args.output)
        target.parent.mkdir(parents=True, exist_ok=True)
        settings = {"limit": args.limit, "epochs": args.epochs, "seed": 42, "trainer": "fit",
                    "machine": numerics.machine_kind()}
        write_json(target.with_suffix(".json"), {"settings": settings, "rows": rows})
        write_text(target.with_suffix(".md"), table)


if __name__ == "__main__":
    main()
