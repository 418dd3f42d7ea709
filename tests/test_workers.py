"""Several workers with tf.distribute.MultiWorkerMirroredStrategy: `invoke train --workers 2` on 127.0.0.1.

The slow tests train the lecture's network with the `tape` trainer (whose
metrics are the whole cluster's) on 1,200 real Fashion-MNIST images, global
batch 32, 3 epochs:
- one process with --strategy default against two worker processes.
  Tolerance: each worker draws its own Dropout masks for its half of the
  batch, so the runs agree statistically, not bit for bit (as
  test_strategy.py's mirrored runs with dropout): test accuracy within 0.05.
- worker 1 killed with SIGKILL inside epoch 2: the launcher ends with exit 2
  and one line naming the worker and the --resume command, within the
  collective ops' timeout plus a margin, never hanging.
- `--resume` of that run with two workers against an uninterrupted two-worker run.
- the launcher killed with SIGKILL: its workers read the end of their stdin
  pipe and stop within seconds, the run marked interrupted, no lock or scratch
  folder left; Ctrl-C leaves no scratch folder either.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, run_folder_from, run_invoke

ARGS = ("--limit", "1200", "--epochs", "3", "--seed", "5", "--trainer", "tape")


def test_workers_needs_two_or_more(invoke_cli):
    result = invoke_cli("train", "--dataset", "fashion_mnist", "--workers", "1")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --workers must be between 2 and 8, got 1"


def test_workers_refuses_another_strategy(invoke_cli):
    result = invoke_cli("train", "--dataset", "fashion_mnist", "--workers", "2", "--strategy", "mirrored")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --workers trains with --strategy multiworker, not mirrored"


@pytest.mark.parametrize("tf_config, expected", [
    ("", "--strategy multiworker needs TF_CONFIG"),
    ("{not json", "is not of the form"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "index below 1"),
    ('{"cluster": {"worker": "a:1,b:2"}, "task": {"type": "worker", "index": 0}}',
     """TF_CONFIG's cluster.worker must be a list of "host:port" strings, got 'a:1,b:2'"""),
    ('{"cluster": {"worker": ["a:1", "b:port"]}, "task": {"type": "worker", "index": 0}}',
     """TF_CONFIG's worker address 'b:port' must be "host:port" with a port number from 1 to 65535"""),
])
def test_multiworker_without_a_good_tf_config_is_one_line(invoke_cli, tmp_path, tf_config, expected):
    result = invoke_cli("train", "--dataset", "fashion_mnist", "--strategy", "multiworker",
                        "--data-dir", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs"),
                        env={"TF_CONFIG": tf_config})
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists()


def test_tf_config_and_free_ports():
    from classifier.machinery.cluster import free_ports, tf_config

    ports = free_ports(3)
    assert len(set(ports)) == 3
    config = json.loads(tf_config(ports, 2))
    assert config == {"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                      "task": {"type": "worker", "index": 2}}


def test_first_failure_blames_the_killed_worker():
    from classifier.machinery.local_workers import _first_failure

    class Done:
        def __init__(self, code):
            self.returncode = code

    assert _first_failure([Done(2), Done(-9)]) == (1, -9)
    assert _first_failure([Done(0), Done(2), Done(2)]) == (1, 2)
    assert _first_failure([Done(0), Done(None)]) is None


def _train(lab, *args, timeout=900):
    result = run_invoke("train", "--dataset", "fashion_mnist", "--data-dir", str(lab / "data"),
                        "--runs-dir", str(lab / "runs"), *ARGS, *args, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return run_folder_from(result.stdout), result.stdout


def _manifest(run_dir):
    return json.loads((run_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def two_workers(fashion_lab):
    """An uninterrupted two-worker run: (run folder, its output)."""
    return _train(fashion_lab, "--workers", "2")


@pytest.mark.slow
def test_two_workers_match_one_process(fashion_lab, two_workers):
    single, _ = _train(fashion_lab)
    run_dir, output = two_workers
    assert output.count("[multiworker] the same data on all 2 replicas") == 2  # the chief and "[worker 1] ..."
    single_metrics = json.loads((single / "metrics.json").read_text())
    multi_metrics = json.loads((run_dir / "metrics.json").read_text())
    print(f"test accuracy: one process {single_metrics['accuracy']:.4f}, two workers {multi_metrics['accuracy']:.4f}")
    assert multi_metrics["accuracy"] > 0.6  # chance is 0.1
    assert abs(multi_metrics["accuracy"] - single_metrics["accuracy"]) <= 0.05
    manifest = _manifest(run_dir)
    assert manifest["status"] == "complete" and manifest["replicas"] == 2
    # Only the chief wrote a run folder: the runs folder (shared with other tests) holds one multiworker run.
    multiworker = [path.name for path in (fashion_lab / "runs").iterdir() if (path / "config.json").is_file()
                   and json.loads((path / "config.json").read_text())["strategy"] == "multiworker"]
    assert multiworker == [run_dir.name]


@pytest.mark.slow
def test_a_killed_worker_stops_the_others_then_resume_finishes(fashion_lab, two_workers, tmp_path):
    log_path = tmp_path / "workers.log"
    with _two_worker_launcher(fashion_lab, log_path) as launcher:
        run_dir, worker_pid = _wait_for_first_checkpoint(launcher, log_path)
        time.sleep(0.5)  # inside epoch 2
        os.kill(worker_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        _, stderr = launcher.communicate(timeout=240)
    print(f"the launcher ended {time.monotonic() - killed_at:.1f} s after the kill")
    assert launcher.returncode == 2
    expected = (f"error: worker 1 was killed; the other workers were stopped; "
                f"continue with: invoke train --resume {run_dir} --workers 2")
    assert stderr.strip().splitlines() == [expected]
    assert _manifest(run_dir)["status"] == "interrupted"
    assert json.loads((run_dir / "checkpoint" / "state.json").read_text())["epochs_done"] == 1

    result = run_invoke("train", "--resume", str(run_dir), "--workers", "2", timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert f"Resuming {run_dir.name} after epoch 1/3" in result.stdout
    resumed, uninterrupted = _manifest(run_dir), _manifest(two_workers[0])
    resumed_metrics = json.loads((run_dir / "metrics.json").read_text())
    uninterrupted_metrics = json.loads((two_workers[0] / "metrics.json").read_text())
    print(f"test accuracy: resumed {resumed_metrics['accuracy']:.4f}, "
          f"uninterrupted {uninterrupted_metrics['accuracy']:.4f}; "
          f"same weights: {resumed['weights_sha256'] == uninterrupted['weights_sha256']}")
    assert resumed["weights_sha256"] == uninterrupted["weights_sha256"]


@contextlib.contextmanager
def _two_worker_launcher(fashion_lab, log_path, env=None):
    """`invoke train --workers 2` in its own session, stdout to log_path; killed on the way out if still running.

    `env`: variables added to the environment (TMPDIR, to see where the workers' scratch folders go).
    """
    command = [sys.executable, "-m", "invoke", "train", "--dataset", "fashion_mnist",
               "--data-dir", str(fashion_lab / "data"), "--runs-dir", str(fashion_lab / "runs"), *ARGS,
               "--workers", "2"]
    with open(log_path, "w") as log:
        launcher = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True, env={**os.environ, **(env or {})})
        try:
            yield launcher
        finally:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)


def _wait_for_first_checkpoint(launcher, log_path, timeout=600):
    """(run folder, worker 1's pid) once the chief has saved epoch 1."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert launcher.poll() is None, log_path.read_text()[-3000:]
        text = log_path.read_text()
        if "Run folder: " in text:
            run_dir = run_folder_from(text)
            state = run_dir / "checkpoint" / "state.json"
            if state.exists() and json.loads(state.read_text())["epochs_done"] >= 1:
                line = next(line for line in text.splitlines() if line.startswith("[workers] worker 1: pid "))
                return run_dir, int(line.split("pid ")[1].split(",")[0])
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint within {timeout} s:\n{log_path.read_text()[-2000:]}")


@pytest.mark.slow
def test_ctrl_c_during_a_two_worker_run_marks_it_and_says_how_to_resume(fashion_lab, tmp_path):
    log_path = tmp_path / "workers.log"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with _two_worker_launcher(fashion_lab, log_path, env={"TMPDIR": str(scratch)}) as launcher:
        run_dir, _ = _wait_for_first_checkpoint(launcher, log_path)
        os.kill(launcher.pid, signal.SIGINT)  # Ctrl-C reaches the launcher; the workers lead their own groups
        _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode == 130, stderr
    done = json.loads((run_dir / "checkpoint" / "state.json").read_text())["epochs_done"]
    assert stderr.strip().splitlines() == [f"error: stopped after {done}/3 epoch(s); continue with: "
                                           f"invoke train --resume {run_dir} --workers 2"]
    assert _manifest(run_dir)["status"] == "interrupted"
    assert not (run_dir / ".lock").exists()
    assert list(scratch.glob("worker-run-*")) == [], "worker 1's scratch folder is deleted"


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_a_launcher_killed_with_sigkill_stops_its_workers_and_marks_the_run(fashion_lab, tmp_path):
    from classifier.machinery.lifecycle import PARENT_GONE_GRACE_SECONDS

    log_path = tmp_path / "workers.log"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with _two_worker_launcher(fashion_lab, log_path, env={"TMPDIR": str(scratch)}) as launcher:
        run_dir, _ = _wait_for_first_checkpoint(launcher, log_path)
        pids = [int(line.split("pid ")[1].split(",")[0]) for line in log_path.read_text().splitlines()
                if line.startswith("[workers] worker ")]
        assert len(pids) == 2 and all(_running(pid) for pid in pids)
        os.kill(launcher.pid, signal.SIGKILL)  # the launcher alone: each worker leads its own process group
        killed_at = time.monotonic()
        launcher.wait()
        while any(_running(pid) for pid in pids) and time.monotonic() < killed_at + 120:
            time.sleep(0.1)
    seconds = time.monotonic() - killed_at
    print(f"the workers ended {seconds:.1f} s after the launcher was killed")
    # The workers read the end of their launcher's pipe at once; one stuck in a collective op gets the grace period.
    assert seconds < PARENT_GONE_GRACE_SECONDS + 10
    assert _manifest(run_dir)["status"] == "interrupted"
    assert not (run_dir / ".lock").exists()
    assert list(scratch.glob("worker-run-*")) == [], "worker 1's scratch folder is deleted"
