"""`invoke train --trainer torch` and the tasks around it.

Run folder, TensorBoard, reproduce, resume after SIGKILL, doctor, bench, bad input.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict

import pytest

from conftest import ROOT, require_torch, run_folder_from, run_invoke

torch = require_torch()

from classifier.lecture.torch_models import build_torch_model  # noqa: E402
from classifier.lecture.torch_train import weights_sha256  # noqa: E402

# One OpenMP thread in the child processes too (see conftest.one_torch_thread).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
ARGS = ("--trainer", "torch", "--limit", "2000", "--epochs", "3", "--seed", "11")


def _train(lab, *args):
    result = run_invoke("train", "--dataset", "fashion_mnist", "--data-dir", str(lab / "data"),
                        "--runs-dir", str(lab / "runs"), *args, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_folder_from(result.stdout), result


def _manifest(run_dir):
    return json.loads((run_dir / "manifest.json").read_text())


def _read(run_dir, name):
    return json.loads((run_dir / name).read_text())


def _board(folder) -> dict:
    """One TensorBoard folder as TensorBoard reads it: {plugin name: {tag: {step: value}}}, and {"content": {tag: bytes}}.

    Scalars are floats, other values NumPy arrays; "content" is each tag's plugin data (the HParams live there).
    """
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    found = defaultdict(dict)
    for tag in accumulator.Tags()["tensors"]:
        plugin = accumulator.SummaryMetadata(tag).plugin_data
        values = {event.step: tensor_util.make_ndarray(event.tensor_proto) for event in accumulator.Tensors(tag)}
        if plugin.plugin_name == "scalars":
            values = {step: float(value) for step, value in values.items()}
        found[plugin.plugin_name][tag] = values
        found["content"][tag] = plugin.content
    return found


@pytest.fixture(scope="module")
def torch_runs(fashion_lab, tmp_path_factory):
    """The same small torch run with TensorBoard on and off: {on: (run folder, finished process)}.

    The run with TensorBoard has a `tensorflow` package first on its path that
    raises RuntimeError: writing the event files must not even try to import
    TensorFlow (TensorBoard's own writer would, and falls back to its stub
    only on ImportError).
    """
    fake = tmp_path_factory.mktemp("no-tensorflow")
    (fake / "tensorflow").mkdir()
    (fake / "tensorflow" / "__init__.py").write_text("raise RuntimeError('the torch trainer imported TensorFlow')\n")
    runs = {}
    for on in (True, False):
        env = {**ONE_THREAD, "PYTHONPATH": str(fake)} if on else ONE_THREAD
        result = run_invoke("train", "--dataset", "fashion_mnist", "--data-dir", str(fashion_lab / "data"),
                            "--runs-dir", str(tmp_path_factory.mktemp(f"torch-runs-{on}")), "--trainer", "torch",
                            "--limit", "600", "--epochs", "2", "--tensorboard", str(on).lower(), env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[on] = run_folder_from(result.stdout), result
    return runs


@pytest.mark.slow
def test_torch_run_folder_holds_the_evidence_and_reproduces(torch_runs):
    run_dir, result = torch_runs[True]
    assert run_dir.name.endswith("-fashion_mnist-torch_module-torch")
    assert "parameters: 333,526" in result.stdout
    assert {"config.json", "history.json", "metrics.json", "timings.json", "manifest.json", "model.pt", "model.txt",
            "samples.png", "learning_curves.png", "confusion_matrix.png"} <= {p.name for p in run_dir.iterdir()}
    assert (run_dir / "checkpoint" / "last.pt").is_file()

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(metrics["argmax_accuracy"], abs=1e-6) and metrics["accuracy"] > 0.3
    assert metrics["probabilities_sum_to_one"] and len(metrics["confusion_matrix"]) == 10
    manifest = _manifest(run_dir)
    environment = manifest["environment"]
    assert manifest["status"] == "complete" and environment["torch"] == torch.__version__
    assert environment["torch_build"]["cuda"] == torch.version.cuda and environment["torch_devices"][0] == "cpu"
    assert "tensorflow" not in environment  # the torch path never imports TensorFlow

    # The weights in PyTorch's format restore the model the hash was taken of.
    model = build_torch_model("torch_module", (28, 28, 1), 10)
    model.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))
    assert weights_sha256(model) == manifest["weights_sha256"]

    # The same seed again: bit-identical weights and metrics.
    rerun = run_invoke("reproduce", str(run_dir), env=ONE_THREAD)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "IDENTICAL" in rerun.stdout


@pytest.mark.slow
def test_torch_runs_write_the_tensorflow_trainers_tensorboard_tags(torch_runs):
    run_dir, result = torch_runs[True]
    history, metrics = _read(run_dir, "history.json"), _read(run_dir, "metrics.json")
    train, validation, top = (_board(run_dir / "tensorboard" / name) for name in ("train", "validation", "."))

    # The fit and tape runs' tags, step = epoch index, the values of history.json.
    assert set(train["scalars"]) == {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"}
    assert set(validation["scalars"]) == {"epoch_loss", "epoch_accuracy"}
    for key in ("loss", "accuracy"):
        assert train["scalars"][f"epoch_{key}"] == pytest.approx(dict(enumerate(history[key])), rel=1e-6)
        assert validation["scalars"][f"epoch_{key}"] == pytest.approx(dict(enumerate(history[f"val_{key}"])), rel=1e-6)
    assert train["scalars"]["epoch_learning_rate"] == pytest.approx({0: 0.001, 1: 0.001})

    # After evaluation: the test metrics, the run's pictures as PNG images, the hyperparameters.
    assert top["scalars"]["test/loss"] == pytest.approx({2: metrics["loss"]})
    assert top["scalars"]["test/accuracy"] == pytest.approx({2: metrics["accuracy"]})
    assert set(top["images"]) == {"samples", "confusion_matrix", "learning_curves"}
    for name, images in top["images"].items():
        assert images[2][2] == (run_dir / f"{name}.png").read_bytes()  # [width, height, PNG] at step 2
    hparams = top["content"]["_hparams_/session_start_info"]
    assert b"torch_module" in hparams and b"batch_size" in hparams and run_dir.name.encode() in hparams
    assert f"TensorBoard: tensorboard --logdir {run_dir.parent}" in result.stdout


@pytest.mark.slow
def test_torch_tensorboard_leaves_the_weights_bit_identical_and_costs_little(torch_runs):
    (with_board, _), (without, _) = torch_runs[True], torch_runs[False]
    assert _manifest(with_board)["weights_sha256"] == _manifest(without)["weights_sha256"]
    assert _read(with_board, "metrics.json") == _read(without, "metrics.json")
    assert not (without / "tensorboard").exists()
    timings = _read(with_board, "timings.json")
    assert 0 < timings["tensorboard_seconds"] < timings["train_seconds"]
    assert _read(without, "timings.json")["tensorboard_seconds"] is None


def test_torch_run_without_the_tensorboard_package_says_so_and_goes_on(tmp_path, monkeypatch, capsys):
    from classifier.machinery.torch_runs import epoch_scalars

    # Earlier tests may have imported TensorBoard's submodules, which Python would find without
    # the package: take them all out, and make `import tensorboard` raise ImportError.
    for name in [name for name in sys.modules if name.startswith("tensorboard.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.delitem(sys.modules, "classifier.machinery.tensorboard_events", raising=False)
    assert epoch_scalars(tmp_path) is None
    warning = capsys.readouterr().out
    assert warning.startswith("warning: TensorBoard event files skipped: ") and "tensorboard" in warning[40:]
    assert warning.strip().endswith("(the tensorboard package comes with requirements/lab.lock)")
    assert not (tmp_path / "tensorboard").exists()


@pytest.mark.slow
def test_sigkill_during_an_epoch_then_resume_is_bit_identical(fashion_lab, tmp_path):
    reference, _ = _train(fashion_lab, *ARGS)
    log_path = tmp_path / "train.log"
    command = [sys.executable, "-m", "invoke", "train", "--dataset", "fashion_mnist", "--data-dir",
               str(fashion_lab / "data"), "--runs-dir", str(fashion_lab / "runs"), *ARGS]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, **ONE_THREAD})
        deadline = time.monotonic() + 300
        checkpoint = None
        while time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()[-3000:]
            text = log_path.read_text()
            if "Run folder: " in text and "epoch=1/3" in text:
                checkpoint = run_folder_from(text) / "checkpoint" / "last.pt"
                if checkpoint.exists():
                    break
            time.sleep(0.05)
        assert checkpoint is not None and checkpoint.exists(), log_path.read_text()[-2000:]
        # Half the first epoch's time after its checkpoint: the middle of the second epoch on any machine,
        # the same point every time (the run prints each epoch's seconds).
        first_epoch = float(re.search(r"epoch=1/3, .*, ([0-9.]+) s$", log_path.read_text(), re.M).group(1))
        time.sleep(first_epoch / 2)
        assert process.poll() is None, "the run finished before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    run_dir = checkpoint.parent.parent
    assert _manifest(run_dir)["status"] == "running"
    assert torch.load(checkpoint, weights_only=False)["epochs_done"] == 1

    result = run_invoke("train", "--resume", str(run_dir), env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Resuming" in result.stdout
    assert _manifest(run_dir)["weights_sha256"] == _manifest(reference)["weights_sha256"]
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads((reference / "metrics.json").read_text())
    assert json.loads((run_dir / "history.json").read_text())["val_loss"] == json.loads(
        (reference / "history.json").read_text())["val_loss"]
    # TensorBoard's curves go on across the kill: one point per epoch, the resumed run's history.
    curves = _board(run_dir / "tensorboard" / "validation")["scalars"]["epoch_loss"]
    assert curves == pytest.approx(dict(enumerate(_read(run_dir, "history.json")["val_loss"])), rel=1e-6)


@pytest.mark.parametrize(("args", "message"), [
    (("--trainer", "jax"), "error: unknown trainer 'jax'; accepted: fit, tape, torch"),
    (("--trainer", "torch", "--model", "functional"),
     "error: model 'functional' is a Keras model; --trainer torch trains one of: torch_module, torch_sequential"),
    (("--trainer", "fit", "--model", "torch_module"), "error: model 'torch_module' is a PyTorch module; train it with --trainer torch"),
    (("--trainer", "torch", "--strategy", "mirrored"),
     "error: --strategy mirrored is for the TensorFlow trainers (fit, tape); --trainer torch takes --strategy default or multiworker only"),
    (("--trainer", "torch", "--recipe", "fast"), "error: --recipe fast is for the TensorFlow trainers"),
])
def test_bad_torch_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = run_invoke("train", "--dataset", "fashion_mnist", "--runs-dir", str(tmp_path / "runs"), *args)
    assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_a_torch_run_resumed_with_a_tensorflow_flag_is_refused(tmp_path):
    run_dir = tmp_path / "runs" / "20261127-120000-fashion_mnist-torch_module-torch"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"dataset": "fashion_mnist", "model": "torch_module", "trainer": "torch"}))
    (run_dir / "manifest.json").write_text(json.dumps({"status": "running"}))
    before = sorted(p.name for p in run_dir.iterdir())
    result = run_invoke("train", "--resume", str(run_dir), "--strategy", "mirrored")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == ("error: --resume continues with the run's own settings (its config.json); "
                                     "drop --strategy")
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_torch_missing_says_how_to_install_it(tmp_path):
    # A package named torch that fails to import, first on the path: as if torch were not installed.
    (tmp_path / "fake" / "torch").mkdir(parents=True)
    (tmp_path / "fake" / "torch" / "__init__.py").write_text("raise ImportError(\"No module named 'torch'\")\n")
    result = run_invoke("train", "--trainer", "torch", "--dataset", "fashion_mnist", "--data-dir", str(tmp_path / "data"),
                        "--runs-dir", str(tmp_path / "runs"), env={"PYTHONPATH": str(tmp_path / "fake")})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == ("error: --trainer torch needs PyTorch, which is not installed in this environment; "
                                     "install it with ./setup.sh, or: pip install --require-hashes -r requirements/torch-cpu.lock")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_doctor_checks_torch_and_a_conv2d_pass(monkeypatch):
    from classifier.machinery.checks import FAIL, OK, WARN, check_torch

    checks = {check.name: check for check in check_torch()}
    assert checks["torch"].status == OK and torch.__version__ in checks["torch"].detail
    assert checks["torch conv2d cpu"].status == OK
    assert ("CUDA" in checks["torch build"].detail) == bool(torch.version.cuda)

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    missing = check_torch()
    assert [check.status for check in missing] == [WARN] and "requirements/torch-cpu.lock" in missing[0].fix
    assert FAIL not in [check.status for check in missing]


def test_doctor_names_a_torch_version_that_is_not_the_locked_one(tmp_path):
    from classifier.machinery.checks import FAIL, check_torch

    (tmp_path / "torch-cpu.lock").write_text("torch==0.0.1+cpu \\\n    --hash=sha256:00\n")
    check = check_torch(tmp_path)[0]
    assert check.status == FAIL and "lock says 0.0.1+cpu" in check.detail and "--require-hashes" in check.fix


@pytest.mark.slow
def test_bench_measures_the_torch_trainer(fashion_lab, tmp_path, monkeypatch):
    from classifier.commands.bench import run_benchmark

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    results = run_benchmark(limit=600, epochs=2, repeats=1, output=str(tmp_path / "bench"),
                            data_dir=str(fashion_lab / "data"), subjects=("torch",))
    torch_row = results["summary"]["torch"]
    assert torch_row["train_images_per_second"] > 0 and 0.1 < torch_row["test_accuracy"] <= 1.0
    assert re.search(r"^\| torch +\|", (tmp_path / "bench.md").read_text(), re.MULTILINE)  # tabulate pads cells


def test_both_images_get_pytorch_unless_built_with_no_torch():
    from classifier.machinery import docker_engine

    for variant in ("cpu", "gpu"):
        # The Dockerfile's WITH_TORCH=1 is the default; only `invoke build --no-torch` passes WITH_TORCH=0.
        assert not any("WITH_TORCH" in part for part in docker_engine.build_command(variant))
        assert "WITH_TORCH=0" in docker_engine.build_command(variant, torch=False)
