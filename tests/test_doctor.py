"""`invoke doctor` passes on a healthy environment and names planted faults with their fix."""

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from classifier.machinery.checks import FAIL, OK, WARN
from conftest import FASHION_MNIST_DEBIAN, run_invoke


def _healthy_data(tmp_path):
    data_dir = tmp_path / "data"
    if FASHION_MNIST_DEBIAN.is_dir():
        result = run_invoke("data", "--dataset", "fashion_mnist", "--from", str(FASHION_MNIST_DEBIAN),
                            "--data-dir", str(data_dir))
        assert result.returncode == 0, result.stderr
    return data_dir


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz is not installed")
def test_doctor_passes_on_a_healthy_environment(tmp_path):
    result = run_invoke("doctor", "--data-dir", str(_healthy_data(tmp_path)), "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no problems found" in result.stdout
    # One Conv2D row per device TensorFlow sees here: the CPU, and each GPU in the GPU image.
    import tensorflow as tf

    devices = [device.name for device in tf.config.list_logical_devices() if device.device_type in ("CPU", "GPU")]
    assert "/device:CPU:0" in devices
    for device in devices:
        assert f"OK    conv2d {device}" in result.stdout, result.stdout


def test_doctor_reports_planted_faults_and_exits_non_zero(tmp_path):
    data_dir = _healthy_data(tmp_path)
    damaged = data_dir / "mnist" / "train-labels-idx1-ubyte.gz"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"<html>not the labels</html>")
    # A PATH without graphviz's `dot` (python is called by its full path).
    result = run_invoke("doctor", "--data-dir", str(data_dir), "--runs-dir", str(tmp_path / "runs"),
                        env={"PATH": str(Path(sys.executable).parent)})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  graphviz" in result.stdout and "fix: apt-get install graphviz" in result.stdout
    assert "FAIL  data mnist" in result.stdout and "HTML/XML page" in result.stdout
    assert "fix: invoke data --dataset mnist" in result.stdout
    assert "2 problem(s) found" in result.stdout
    assert "Traceback" not in result.stderr


def test_doctor_without_tensorflow_fails_that_one_check_and_runs_the_others(tmp_path):
    """A torch-only environment (the README's .venv-torch): TensorFlow cannot be imported there."""
    prelude = tmp_path / "no-tensorflow"
    prelude.mkdir()
    # None in sys.modules makes `import tensorflow` raise ModuleNotFoundError, as where it is not installed.
    (prelude / "sitecustomize.py").write_text("import sys\nsys.modules['tensorflow'] = None\n")
    data_dir = _healthy_data(tmp_path)
    result = run_invoke("doctor", "--data-dir", str(data_dir), "--runs-dir", str(tmp_path / "runs"),
                        env={"PYTHONPATH": os.pathsep.join(filter(None, [str(prelude), os.environ.get("PYTHONPATH")]))})
    lines = result.stdout.splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stdout + result.stderr
    failed = [line for line in lines if line.startswith("FAIL  ")]
    assert [line.split()[1] for line in failed if "graphviz" not in line] == ["tensorflow"]
    tensorflow = lines.index(next(line for line in failed if line.split()[1] == "tensorflow"))
    assert "not importable" in lines[tensorflow] and "requirements/cpu.lock" in lines[tensorflow + 1]
    assert not any("conv2d /device:" in line for line in lines)  # TensorFlow's own checks did not run
    names = {line[6:].split("  ")[0] for line in lines if line[:4].strip() in (OK, "INFO", WARN, FAIL)}
    assert {"torch", "data fashion_mnist", f"disk {data_dir}", f"disk {tmp_path / 'runs'}"} <= names
    try:
        import torch  # noqa: F401
    except ImportError:
        return
    assert "OK    torch conv2d cpu" in result.stdout


def test_doctor_fails_a_data_folder_that_is_a_file(tmp_path):
    blocker = tmp_path / "data"
    blocker.write_text("not a folder")
    result = run_invoke("doctor", "--runs-dir", str(tmp_path / "runs"), env={"CLASSIFIER_DATA_DIR": str(blocker)})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stdout + result.stderr
    rows = [re.split(r"\s{2,}", line.strip()) for line in result.stdout.splitlines()]
    assert [FAIL, "data folder", f"{blocker} is a file, not a folder"] in rows, result.stdout
    assert ["fix: point --data-dir or CLASSIFIER_DATA_DIR at a folder (default ./data), or move the file away"] in rows
    assert not any(row[1].startswith("data ") and row[1] != "data folder" for row in rows if len(row) > 1)
    assert blocker.read_text() == "not a folder"


def _rows(checks):
    return {check.name: (check.status, check.detail, check.fix) for check in checks}


def test_diagnose_fails_missing_task_packages_and_a_runs_path_that_is_a_file(tmp_path, monkeypatch, capsys):
    """onnxruntime and tf_keras not importable (at the lookup the tasks use), --runs-dir a file: problems, not OK."""
    import importlib.util

    from classifier.commands import doctor

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name in ("onnxruntime", "tf_keras") else find_spec(name, *args))
    monkeypatch.delenv("LAB_IMAGE", raising=False)
    runs = tmp_path / "runs"
    runs.write_text("a file", encoding="utf-8")
    data = tmp_path / "blocker" / "data"
    data.parent.write_text("a file", encoding="utf-8")
    checks = doctor.diagnose(data, runs)
    rows = _rows(checks)
    assert rows["onnxruntime"] == (FAIL, "not importable: invoke export --format onnx needs it",
                                   "pip install --require-hashes -r requirements/lab.lock (or ./setup.sh)")
    assert rows["tf_keras"] == (FAIL, "not importable: invoke course (the course's TensorFlow scripts) needs it",
                                "pip install --no-deps --require-hashes -r requirements/course.lock")
    assert rows["onnx"][0] == rows["tf2onnx"][0] == rows["ai_edge_litert"][0] == OK  # the control: installed here
    assert rows[f"disk {runs}"][:2] == (FAIL, f"{runs} is a file, not a folder")
    assert rows[f"disk {data}"][:2] == (FAIL, f"{data} cannot be made: {data.parent} is a file, not a folder")
    assert runs.read_text(encoding="utf-8") == "a file"
    assert not doctor.report(checks)
    assert "no problems found" not in capsys.readouterr().out


