"""Judge finished runs side by side: load and verify each, name what differs, give the verdict.

    invoke compare runs/REFERENCE runs/STUDENT

The evidence is read from the run folders (config.json's settings, the
manifest's data hashes, environment, kind of machine and weights hash,
metrics.json), one list per kind of evidence, then one verdict:

    IDENTICAL         the same test metrics and bit-identical weights.
    WITHIN TOLERANCE  other weights, where bit-identical ones are not
                      promised (another kind of machine or other software),
                      and every test metric within the tolerance.
    DIFFERENT         another framework, other settings or other data
                      (named), metrics beyond the tolerance, or other weights or
                      metrics where the same machine and software promise the same bits.

Each run's weights file and metrics.json are checked against the SHA-256 its
manifest recorded when it finished (runs.verify_run_files). A notebook's run
(lab.record_run) is judged as the run of the `invoke train` it names: the
same settings, the same data files, its numerics mode read from the
variables it recorded. `invoke compare` (commands/compare.py) and `invoke
reproduce` (commands/reproduce.py) print what these functions find.
This module never imports TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from classifier import registry
from classifier.machinery import numerics
from classifier.config import UserError
from classifier.machinery.runs import read_object, read_run_files, resume_hint, verify_run_files

# Keys of runs.environment_record() whose change can change the numbers, split
# into the machine's (hardware and the numerics variables) and the software's.
MACHINE_KEYS = ("cpu", "cpu_count", "devices", "torch_devices", "torch_threads", "numerics_env")
SOFTWARE_KEYS = ("python", "tensorflow", "tensorflow_build", "torch", "torch_build", "container_image", "git")
METRICS = ("loss", "accuracy", "argmax_accuracy")

# Config keys that do not change the weights (config.py says so of each): where files lie, whether
# TensorBoard event files are written, how many test images one evaluation step takes. The numerics
# mode is judged with the machine (it decides the arithmetic, not the model).
_NOT_SETTINGS = ("data_dir", "runs_dir", "tensorboard", "eval_batch_size", "numerics")

# What each framework alone records in the environment: compared only between two runs of one framework,
# so that a torch run beside a Keras run on one machine is "other framework", not "other machine". torch's
# trainer sets CUBLAS_WORKSPACE_CONFIG itself (lecture/torch_train.py), so a Keras run records it unset.
FRAMEWORK_KEYS = {"TensorFlow": ("tensorflow", "tensorflow_build", "devices"),
                  "PyTorch": ("torch", "torch_build", "torch_devices", "torch_threads")}
_FRAMEWORK_VARIABLES = ("CUBLAS_WORKSPACE_CONFIG",)

# The metrics' largest accepted absolute difference on another kind of machine.
# Measured (benchmarks/results/numerics_machines_pre_redesign.md): across ten
# emulated machines the test loss of the README's run spread by 0.010 and the
# accuracy by 0.004; twice that is accepted.
DEFAULT_TOLERANCE = 0.02


def environment_differences(recorded: dict, current: dict, keys=MACHINE_KEYS + SOFTWARE_KEYS,
                            packages: bool = True) -> list[str]:
    """One line per difference between two environment records (runs.environment_record()).

    Args:
        recorded, current: the two records.
        keys: the entries compared, in the order shown.
        packages: also compare the installed packages' versions.
    """
    lines = []
    for key in keys:
        before, now = recorded.get(key), current.get(key)
        if key == "git" and None in (_git_commit(before), _git_commit(now)):
            continue  # git could not say (no repository, no git, too slow): unknown is no evidence of a change
        if isinstance(before, dict) and isinstance(now, dict):
            # Name only the entries that changed, e.g. numerics_env.TF_ENABLE_ONEDNN_OPTS.
            for sub in sorted(set(before) | set(now)):
                if before.get(sub) != now.get(sub):
                    lines.append(f"{key}.{sub}: {before.get(sub)} -> {now.get(sub)}")
        elif before != now:
            lines.append(f"{key}: {before} -> {now}")
    if packages:
        old_packages, new_packages = recorded.get("packages", {}), current.get("packages", {})
        for name in sorted(set(old_packages) | set(new_packages)):
            if old_packages.get(name) != new_packages.get(name):
                lines.append(f"package {name}: {old_packages.get(name, 'absent')} -> "
                             f"{new_packages.get(name, 'absent')}")
    return lines


def _git_commit(state) -> str | None:
    """The commit a run's `git` record names, None where git gave none."""
    return state.get("commit") if isinstance(state, dict) else None


def machine_differences(modes: tuple[str, str], environments: tuple[dict, dict],
                        kinds: tuple[dict | None, dict | None]) -> list[str]:
    """What differs between two machines in what changes the numbers: numerics mode, kind of machine, variables.

    Args:
        modes: the two numerics modes.
        environments: the two environment records.
        kinds: the two numerics.machine_kind() records (None where a run recorded none).
    """
    lines = [f"numerics: {modes[0]} -> {modes[1]}"] if modes[0] != modes[1] else []
    # A CPU model or core count that the mode makes harmless is no reason to doubt the bits.
    mode = modes[0] if modes[0] == modes[1] else "fastest"
    lines += numerics.kind_differences(mode, kinds[0], kinds[1])
    keys = MACHINE_KEYS
    if kinds[0] and kinds[1]:
        keys = tuple(key for key in keys if key not in ("cpu", "cpu_count"))  # judged through the kinds
    return lines + environment_differences(*environments, keys=keys, packages=False)


def software_differences(environments: tuple[dict, dict]) -> list[str]:
    """What differs between two environments' software: Python, frameworks, image, lab commit, packages."""
    return environment_differences(*environments, keys=SOFTWARE_KEYS, packages=True)


def load_finished_run(run_dir: Path) -> tuple[dict, dict]:
    """(manifest, metrics) of a complete run; UserError for anything else."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} does not exist or is not a folder; give a run folder, e.g. runs/<run name>")
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(f"{run_dir} is not a run folder (no manifest.json in it)")
    manifest = read_object(manifest_path)
    if (run_dir / "config.json").is_file():
        read_run_files(run_dir)  # a hand-edited config.json or manifest.json is refused here
    if manifest.get("status") != "complete" or not (run_dir / "metrics.json").is_file():
        raise UserError(f"{run_dir} did not finish (status {manifest.get('status')!r}); {resume_hint(run_dir)}")
    # A file changed since the run finished is named as such before its contents are judged.
    verified = "files_sha256" in manifest and verify_run_files(run_dir, manifest)
    metrics = read_object(run_dir / "metrics.json")
    missing = [f"manifest.json's {key}" for key in ("config", "data", "weights_sha256") if key not in manifest]
    missing += [f"metrics.json's {key}" for key in METRICS if not isinstance(metrics.get(key), (int, float))]
    if missing:
        raise UserError(f"{run_dir} is damaged: {', '.join(missing)} is missing; train it again")
    if not verified and not verify_run_files(run_dir, manifest):
        print(f"note: {run_dir}'s manifest records no SHA-256 of its files (a run from before the lab recorded "
              "them): its weights file and metrics.json are taken as they are")
    return manifest, metrics


def framework(manifest: dict) -> str:
    """The library a run trained with: "PyTorch" for the torch trainer, else "TensorFlow"."""
    return "PyTorch" if manifest["config"].get("trainer") in registry.TORCH_TRAINERS else "TensorFlow"


def recorded_mode(manifest: dict) -> str:
    """A run's numerics mode: the one its manifest records, or for a notebook's run the one its variables hold."""
    if isinstance(manifest.get("numerics"), dict) and manifest["numerics"].get("mode"):
        return manifest["numerics"]["mode"]
    if manifest.get("source") == "notebook":
        # lab.record_run writes the config's default mode; lab.use_numerics() applied $CLASSIFIER_NUMERICS.
        return numerics.mode_of(manifest.get("environment", {}).get("numerics_env") or {})
    return manifest["config"].get("numerics", numerics.DEFAULT_MODE)


@dataclass(frozen=True)
class Comparison:
    """The evidence of two runs side by side; each list holds one line per difference."""

    framework: list[str]  # the libraries trained with, e.g. ["TensorFlow (fit) -> PyTorch (torch)"]
    settings: list[str]  # the configs, less what does not change the weights (_NOT_SETTINGS)
    data: list[str]  # the dataset, its files' SHA-256 and the split sizes
    machine: list[str]  # numerics mode, kind of machine, numerics variables (machine_differences)
    software: list[str]  # Python, frameworks, image, lab commit, packages (software_differences)
    rows: list[tuple[str, object, object]]  # (name, first, second): METRICS, then weights_sha256

    @property
    def identical(self) -> bool:
        """The same test metrics and bit-identical weights."""
        return all(first == second for _, first, second in self.rows)

    @property
    def same_weights(self) -> bool:
        """Bit-identical weights (the last row)."""
        return self.rows[-1][1] == self.rows[-1][2]

    @property
    def bits_promised(self) -> bool:
        """Whether the same machine and software promise bit-identical weights."""
        return not self.machine and not self.software

    @property
    def largest(self) -> float:
        """The largest absolute difference of the test metrics."""
        return max(abs(first - second) for _, first, second in self.rows[:-1])


def compare_records(first: tuple[dict, dict], second: tuple[dict, dict]) -> Comparison:
    """Compare two runs' (manifest, metrics), as load_finished_run returns them."""
    (manifest_a, metrics_a), (manifest_b, metrics_b) = first, second
    modes = (recorded_mode(manifest_a), recorded_mode(manifest_b))
    frameworks = (framework(manifest_a), framework(manifest_b))
    environments = _comparable_environments(frameworks, manifest_a.get("environment", {}),
                                            manifest_b.get("environment", {}))
    kinds = tuple((manifest.get("numerics") or {}).get("machine") for manifest in (manifest_a, manifest_b))
    rows = [(key, metrics_a[key], metrics_b[key]) for key in METRICS]
    rows.append(("weights_sha256", manifest_a["weights_sha256"], manifest_b["weights_sha256"]))
    trainers = (manifest_a["config"].get("trainer"), manifest_b["config"].get("trainer"))
    return Comparison(
        framework=([f"{frameworks[0]} ({trainers[0]}) -> {frameworks[1]} ({trainers[1]})"]
                   if frameworks[0] != frameworks[1] else []),
        settings=_settings_differences(manifest_a["config"], manifest_b["config"]),
        data=_data_differences(manifest_a["data"], manifest_b["data"]),
        machine=machine_differences(modes, environments, kinds),
        software=software_differences(environments),
        rows=rows,
    )


def _comparable_environments(frameworks: tuple[str, str], first: dict, second: dict) -> tuple[dict, dict]:
    """The two environment records, less what only one framework records when the frameworks differ."""
    if frameworks[0] == frameworks[1]:
        return first, second
    own = {key for keys in FRAMEWORK_KEYS.values() for key in keys}

    def common(environment: dict) -> dict:
        variables = {name: value for name, value in (environment.get("numerics_env") or {}).items()
                     if name not in _FRAMEWORK_VARIABLES}
        return {**{key: value for key, value in environment.items() if key not in own}, "numerics_env": variables}

    return common(first), common(second)


def _settings_differences(first: dict, second: dict) -> list[str]:
    return [f"{key}: {first.get(key)} -> {second.get(key)}" for key in sorted(set(first) | set(second))
            if key not in _NOT_SETTINGS and first.get(key) != second.get(key)]


def _data_differences(first: dict, second: dict) -> list[str]:
    # A notebook's run records no training and validation counts: limit and val_split, compared with the
    # settings, decide them. The dataset and the test count every run records.
    lines = [f"{key}: {first.get(key)} -> {second.get(key)}" for key in ("dataset", "train", "validation", "test")
             if first.get(key) != second.get(key) and (key in first and key in second or key in ("dataset", "test"))]
    hashes_a, hashes_b = first.get("sha256", {}), second.get("sha256", {})
    for name in sorted(set(hashes_a) | set(hashes_b)):
        if hashes_a.get(name) != hashes_b.get(name):
            lines.append(f"{name}: sha256 {_short(hashes_a.get(name))} -> {_short(hashes_b.get(name))}")
    return lines


def _short(digest: str | None) -> str:
    return f"{digest[:12]}..." if digest else "absent"


EVIDENCE = ("framework", "settings", "data", "machine", "software")


def judge(comparison: Comparison, tolerance: float) -> tuple[bool, str]:
    """(whether the runs agree, the verdict), e.g. (True, "IDENTICAL") or (False, "DIFFERENT: other settings").

    The verdict line `invoke compare` prints is the verdict, ": ", and the two runs' names.

    Args:
        comparison: what compare_records found.
        tolerance: the largest absolute difference of a test metric accepted
            where bit-identical weights are not promised.
    """
    differing = [f"other {name}" for name in EVIDENCE if getattr(comparison, name)]
    if comparison.framework or comparison.settings or comparison.data:
        return False, f"DIFFERENT: {', '.join(differing)}"
    if comparison.identical:
        return True, "IDENTICAL"
    if comparison.bits_promised and comparison.same_weights:
        # Bit-identical weights tested on the same images by the same machine and software give the same numbers.
        return False, ("DIFFERENT: other test metrics from the same weights, settings, data, machine and software "
                       f"(largest difference {comparison.largest:.3g})")
    if comparison.bits_promised:
        return False, "DIFFERENT: other weights from the same settings, data, machine and software"
    within = comparison.largest <= tolerance
    return within, (f"{'WITHIN TOLERANCE' if within else 'DIFFERENT'}: largest metric difference "
                    f"{comparison.largest:.3g} {'<=' if within else '>'} {tolerance} ({', '.join(differing)})")


def check_tolerance(tolerance: float | None) -> float:
    """`tolerance`, or DEFAULT_TOLERANCE for None; UserError for a negative one."""
    tolerance = DEFAULT_TOLERANCE if tolerance is None else tolerance
    if not tolerance >= 0:
        raise UserError(f"--tolerance must be 0 or more, got {tolerance}")
    return tolerance

