"""`invoke train --trainer torch` and the tasks around it: run folder, reproduce, resume after SIGKILL, doctor, bench, bad input."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, require_torch, run_folder_from, run_invoke

torch = require_torch()

from classifier.torch_models import build_torch_model  # noqa: E402
from classifier.torch_train import weights_sha256  # noqa: E402

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


@pytest.mark.slow
def test_torch_run_folder_holds_the_evidence_and_reproduces(fashion_lab):
    run_dir, result = _train(fashion_lab, "--trainer", "torch", "--limit", "600", "--epochs", "1")
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
        time.sleep(random.uniform(0.0, 0.5))  # somewhere inside the second epoch
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


@pytest.mark.parametrize(("args", "message"), [
    (("--trainer", "jax"), "error: unknown trainer 'jax'; accepted: fit, tape, torch"),
    (("--trainer", "torch", "--model", "functional"),
     "error: model 'functional' is a Keras model; --trainer torch trains one of: torch_module, torch_sequential"),
    (("--trainer", "fit", "--model", "torch_module"), "error: model 'torch_module' is a PyTorch module; train it with --trainer torch"),
    (("--trainer", "torch", "--strategy", "mirrored"),
     "error: --strategy mirrored is for the TensorFlow trainers (fit, tape); --trainer torch takes --strategy default only"),
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
    from classifier.doctor import FAIL, OK, WARN, check_torch

    checks = {check.name: check for check in check_torch()}
    assert checks["torch"].status == OK and torch.__version__ in checks["torch"].detail
    assert checks["torch conv2d cpu"].status == OK
    assert ("CUDA" in checks["torch build"].detail) == bool(torch.version.cuda)

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    missing = check_torch()
    assert [check.status for check in missing] == [WARN] and "requirements/torch-cpu.lock" in missing[0].fix
    assert FAIL not in [check.status for check in missing]


def test_doctor_names_a_torch_version_that_is_not_the_locked_one(tmp_path):
    from classifier.doctor import FAIL, check_torch

    (tmp_path / "torch-cpu.lock").write_text("torch==0.0.1+cpu \\\n    --hash=sha256:00\n")
    check = check_torch(tmp_path)[0]
    assert check.status == FAIL and "lock says 0.0.1+cpu" in check.detail and "--require-hashes" in check.fix


@pytest.mark.slow
def test_bench_measures_the_torch_trainer(fashion_lab, tmp_path, monkeypatch):
    from classifier.bench import run_benchmark

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    results = run_benchmark(limit=600, epochs=2, repeats=1, output=str(tmp_path / "bench"),
                            data_dir=str(fashion_lab / "data"), subjects=("torch",))
    torch_row = results["summary"]["torch"]
    assert torch_row["train_images_per_second"] > 0 and 0.1 < torch_row["test_accuracy"] <= 1.0
    assert "| torch |" in (tmp_path / "bench.md").read_text()


def test_the_image_gets_pytorch_only_when_asked_and_only_on_the_cpu_variant():
    from classifier import container
    from classifier.config import UserError

    assert "WITH_TORCH=1" in container.build_command("cpu", torch=True)
    assert not any("WITH_TORCH" in part for part in container.build_command("cpu"))
    with pytest.raises(UserError, match="--torch needs --variant cpu"):
        container.build("gpu", torch=True)
