"""`invoke train --trainer torch --workers 2`: torch.distributed (gloo) with two processes on 127.0.0.1.

The lecture's network on 2,400 real Fashion-MNIST images, global batch 32
(16 per worker), 3 epochs, one torch thread per worker (OMP_NUM_THREADS=1,
which torch reads as set_num_threads(1); the manifest records it):
- an uninterrupted two-worker run: only worker 0 writes a run folder;
- worker 1 killed with SIGKILL inside epoch 2: the launcher ends with exit 2
  and one line naming the worker and the --resume command;
- `--resume` of that run with two workers gives the uninterrupted run's
  weights bit for bit (the same SHA-256).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, require_torch, run_folder_from, run_invoke

torch = require_torch()

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
ARGS = ("--trainer", "torch", "--limit", "2400", "--epochs", "3", "--seed", "7", "--workers", "2")


def _command(lab, runs):
    return ["train", "--dataset", "fashion_mnist", "--data-dir", str(lab / "data"), "--runs-dir", str(runs), *ARGS]


def _manifest(run_dir):
    return json.loads((run_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def two_workers(fashion_lab, tmp_path_factory):
    """An uninterrupted two-worker torch run in a runs folder of its own: (run folder, its output)."""
    runs = tmp_path_factory.mktemp("torch-workers")
    result = run_invoke(*_command(fashion_lab, runs), env=ONE_THREAD, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return run_folder_from(result.stdout), result.stdout


def test_bad_batch_split_is_one_line(fashion_lab, tmp_path):
    result = run_invoke(*_command(fashion_lab, tmp_path / "runs"), "--batch-size", "33", env=ONE_THREAD, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "--batch-size 33 does not split evenly between 2 workers; pick a multiple of 2" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


@pytest.mark.slow  # its fixture trains two workers on 2,400 real images for 3 epochs
def test_two_workers_train_with_gloo_and_only_worker_0_writes(two_workers):
    run_dir, output = two_workers
    assert "[torch.distributed] worker 0 of 2, backend gloo, device cpu" in output
    assert "[worker 1] [torch.distributed] worker 1 of 2, backend gloo, device cpu" in output
    manifest = _manifest(run_dir)
    assert manifest["status"] == "complete" and manifest["replicas"] == 2
    assert manifest["torch_distributed_backend"] == "gloo" and manifest["environment"]["torch_threads"] == 1
    assert [path.name for path in run_dir.parent.iterdir()] == [run_dir.name]
    # Worker 1's scratch folder is gone, and both workers ended with the same test accuracy (the same weights).
    scratch = next(line for line in output.splitlines() if "Scratch folder of this worker: " in line).split(": ", 1)[1]
    assert not os.path.exists(scratch)
    accuracies = [line.split("test accuracy ")[1].split(",")[0] for line in output.splitlines() if "test accuracy" in line]
    assert len(accuracies) == 2 and accuracies[0] == accuracies[1]
    assert json.loads((run_dir / "metrics.json").read_text())["accuracy"] > 0.5  # chance is 0.1


@pytest.mark.slow
def test_a_killed_worker_stops_the_other_then_resume_is_bit_identical(fashion_lab, two_workers, tmp_path):
    runs = tmp_path / "runs"
    log_path = tmp_path / "workers.log"
    with open(log_path, "w") as log:
        launcher = subprocess.Popen([sys.executable, "-m", "invoke", *_command(fashion_lab, runs)], cwd=ROOT,
                                    stdout=log, stderr=subprocess.PIPE, text=True, start_new_session=True,
                                    env={**os.environ, **ONE_THREAD})
        try:
            run_dir, worker_pid = _wait_for_first_checkpoint(launcher, log_path)
            time.sleep(0.5)  # inside epoch 2
            assert launcher.poll() is None, "the run finished before worker 1 could be killed"
            os.kill(worker_pid, signal.SIGKILL)
            _, stderr = launcher.communicate(timeout=240)
        finally:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
    print(log_path.read_text()[-1500:], stderr)
    assert launcher.returncode == 2
    expected = (f"error: worker 1 was killed; the other workers were stopped; "
                f"continue with: invoke train --resume {run_dir} --workers 2")
    assert stderr.strip().splitlines() == [expected]
    assert _manifest(run_dir)["status"] == "interrupted"
    # The killed worker could not delete its scratch folder; the launcher did.
    log = log_path.read_text()
    scratch = next(line for line in log.splitlines() if "Scratch folder of this worker: " in line).split(": ", 1)[1]
    assert not os.path.exists(scratch)
    assert torch.load(run_dir / "checkpoint" / "last.pt", weights_only=False)["epochs_done"] == 1

    result = run_invoke("train", "--resume", str(run_dir), "--workers", "2", env=ONE_THREAD, timeout=900)
    print(result.stdout[-1500:])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert f"Resuming {run_dir.name} after epoch 1/3" in result.stdout
    assert _manifest(run_dir)["status"] == "complete"
    assert _manifest(run_dir)["weights_sha256"] == _manifest(two_workers[0])["weights_sha256"]


def _wait_for_first_checkpoint(launcher, log_path, timeout=600):
    """(run folder, worker 1's pid) once worker 0 has saved epoch 1's checkpoint."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert launcher.poll() is None, log_path.read_text()[-3000:]
        text = log_path.read_text()
        if "Run folder: " in text and "epoch=1/3" in text:
            run_dir = run_folder_from(text)
            if (run_dir / "checkpoint" / "last.pt").exists():
                line = next(line for line in text.splitlines() if line.startswith("[workers] worker 1: pid "))
                return run_dir, int(line.split("pid ")[1].split(",")[0])
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint within {timeout} s:\n{log_path.read_text()[-2000:]}")


def test_only_a_lost_worker_becomes_the_resume_line(tmp_path):
    """gloo's transport error is one line with the resume command; any other RuntimeError is a bug and passes through."""
    from classifier.config import UserError, make_config
    from classifier.machinery.torch_distribute import lost_workers

    class Run:
        home = tmp_path / "run"
        stopped_calls = 0

        def stopped(self):
            self.stopped_calls += 1

    run, config = Run(), make_config(trainer="torch", epochs=3)
    gloo = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:2455: "
                        "Connection reset by peer. This is typically caused by a remote worker hanging")
    with pytest.raises(UserError) as raised, lost_workers(config, run, lambda: 1):
        raise gloo
    assert str(raised.value).endswith(f"after 1/3 epoch(s); continue with: invoke train --resume {run.home} --workers N")
    assert run.stopped_calls == 1
    with pytest.raises(RuntimeError, match="deterministic"), lost_workers(config, run, lambda: 1):
        raise RuntimeError("an op has no deterministic implementation")
    assert run.stopped_calls == 1
