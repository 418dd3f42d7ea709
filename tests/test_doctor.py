"""`invoke doctor` passes on a healthy environment and names planted faults with their fix."""

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from classifier.commands.doctor import FAIL, OK, WARN, Check, check_datasets, check_graphviz, check_versions, locked_versions, python_check
from classifier.config import UserError
from conftest import FASHION_MNIST_DEBIAN, run_invoke


REQUIREMENTS = Path(__file__).parent.parent / "requirements"


def expected_lock() -> Path:
    """The lock doctor expects in this environment, as its platform check names it: requirements/cpu.lock
    here, requirements/gpu.lock in the GPU image (where `tensorflow`, the CUDA build, is installed)."""
    platform = next(check for check in check_versions() if check.name == "platform")
    return REQUIREMENTS / Path(re.search(r"expects (\S+?),", platform.detail).group(1)).name


def tensorflow_package(lock: Path) -> str:
    """TensorFlow's distribution name in `lock`: tensorflow-cpu (x86-64's CPU lock) or tensorflow (gpu.lock, arm64)."""
    return next(name for name in locked_versions(lock) if name in ("tensorflow", "tensorflow-cpu"))


def test_lock_file_is_read():
    pins = locked_versions(REQUIREMENTS / "cpu.lock")
    assert pins["tensorflow-cpu"] == "2.21.0" and pins["keras"].startswith("3.")
    gpu = locked_versions(REQUIREMENTS / "gpu.lock")
    assert gpu["tensorflow"] == pins["tensorflow-cpu"] and "tensorflow-cpu" not in gpu
    assert gpu["keras"] == pins["keras"] and any(name.startswith("nvidia-cudnn") for name in gpu)


def test_installed_versions_match_the_lock():
    # The package names are the lock's that this environment needs (tensorflow-cpu here, tensorflow in the GPU image).
    names = (tensorflow_package(expected_lock()), "keras", "numpy")
    checks = {check.name: check.status for check in check_versions()}
    assert {name: checks.get(name) for name in names} == dict.fromkeys(names, OK), checks


def test_python_other_than_the_locks_is_a_warning_with_its_fix():
    assert python_check((3, 11, 7)) == Check("python", OK, "3.11.7")
    other = python_check((3, 12, 1))
    assert (other.status, other.detail) == (WARN, "3.12.1") and "3.11" in other.fix


def test_version_mismatch_is_a_failure_with_its_fix(tmp_path):
    expected = expected_lock()  # the lock this environment is checked against (gpu.lock in the GPU image)
    lock = expected.read_text(encoding="utf-8")
    (tmp_path / expected.name).write_text(lock.replace("keras==", "keras==0.0.1 \\\n    # was "), encoding="utf-8")
    keras = next(check for check in check_versions(tmp_path) if check.name == "keras")
    assert keras.status == FAIL and "lock says 0.0.1" in keras.detail and "--require-hashes" in keras.fix


def test_corrupted_data_file_fails_with_the_fix(tiny_dataset, tmp_path):
    from classifier.machinery.download import import_from

    dataset, source = tiny_dataset
    import_from(dataset, tmp_path, source)
    (tmp_path / "tiny" / dataset.files[2].name).write_bytes(b"\x1f\x8b damaged")
    check = next(check for check in check_datasets(tmp_path) if check.name == "data tiny")
    assert check.status == FAIL and dataset.files[2].name in check.detail
    assert "invoke data --dataset tiny" in check.fix


def test_graphviz_missing_from_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    check = check_graphviz()
    assert check.status == FAIL and "apt-get install graphviz" in check.fix


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


def test_torch_in_its_own_kernel_environment_is_found_by_doctor_and_named_by_train(tmp_path, monkeypatch):
    # The GPU image: torch is not importable here (TensorFlow's environment) but the "pytorch" kernel's Python has it.
    from classifier.commands import doctor

    python = tmp_path / "venv-torch" / "python"
    python.parent.mkdir()
    python.write_text('#!/bin/sh\n[ "$1" = -c ] && echo 2.13.0\n')
    python.chmod(0o755)
    kernel = tmp_path / "jupyter" / "kernels" / "pytorch"
    kernel.mkdir(parents=True)
    (kernel / "kernel.json").write_text(json.dumps({"argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                                                    "display_name": "Python (PyTorch)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    checks = doctor.check_torch()
    assert [(check.name, check.status) for check in checks] == [("torch", OK)]
    assert checks[0].detail == (f'2.13.0 in its own environment, the Jupyter kernel "Python (PyTorch)" ({python}); '
                                f"check it with {python} -m invoke doctor")
    # `invoke train --trainer torch` there names the environment to run it in.
    from classifier.machinery.torch_runs import import_torch

    with pytest.raises(UserError, match=re.escape(f"in its own environment here: run `{python} -m invoke train ... "
                                                  '--trainer torch` (notebooks: the kernel "Python (PyTorch)")')):
        import_torch()
    (kernel / "kernel.json").unlink()  # without the kernel: the warning, as before
    assert [(check.name, check.status) for check in doctor.check_torch()] == [("torch", WARN)]


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


def test_tf_keras_missing_in_the_lab_image_is_a_warning(monkeypatch):
    """The image does not install requirements/course.lock: there `invoke course` with TensorFlow is a known gap."""
    import importlib.util

    from classifier.commands import doctor

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    monkeypatch.setenv("LAB_IMAGE", "classifier-lab:cpu")
    rows = _rows(doctor.check_task_modules())
    assert rows["tf_keras"][0] == WARN and rows["onnxruntime"][0] == FAIL


def _fake_commands(folder: Path, **scripts: str) -> str:
    """Executables named after the keywords (docker_compose -> docker-compose) in `folder`; returns a PATH."""
    folder.mkdir()
    for name, body in scripts.items():
        path = folder / name.replace("_", "-")
        path.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
        path.chmod(0o755)
    return str(folder)


@pytest.mark.skipif(sys.platform == "win32", reason="the fake docker commands are shell scripts")
def test_doctor_accepts_docker_compose_v1_as_the_container_tasks_do(tmp_path, monkeypatch):
    from classifier.commands import doctor
    from classifier.machinery import docker_engine

    # A docker without the compose plugin, and docker-compose 1.29 beside it.
    monkeypatch.setenv("PATH", _fake_commands(
        tmp_path / "bin",
        docker='[ "$1" = compose ] && exit 1\n[ "$1" = info ] && echo \'{"runc":{}}\'\nexit 0',
        docker_compose='echo "docker-compose version 1.29.2, build 5becea4c"'))
    monkeypatch.delenv("LAB_IMAGE", raising=False)
    assert docker_engine.compose_command() == ["docker-compose"]
    rows = _rows(doctor.check_host_docker())
    assert rows["docker compose"] == (OK, "docker-compose version 1.29.2, build 5becea4c", "")
    (tmp_path / "bin" / "docker-compose").unlink()  # neither: the warning, with both ways to fix it
    assert rows != _rows(doctor.check_host_docker())
    assert _rows(doctor.check_host_docker())["docker compose"] == (
        WARN, "missing", "install the docker-compose-plugin (Compose v2), or docker-compose 1.28+")
