"""The environment checks `invoke doctor` runs (classifier/machinery/checks.py), each against a planted fault."""

import json
import re
import sys
from pathlib import Path

import pytest

from classifier.config import UserError
from classifier.machinery import checks
from classifier.machinery.checks import FAIL, INFO, OK, WARN, Check, check_datasets, check_graphviz, check_versions, python_check
from classifier.machinery.locks import locked_versions


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


def test_torch_in_its_own_kernel_environment_is_found_by_doctor_and_named_by_train(tmp_path, monkeypatch):
    # The GPU image: torch is not importable here (TensorFlow's environment) but the "pytorch" kernel's Python has it.
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
    found = checks.check_torch()
    assert [(check.name, check.status) for check in found] == [("torch", OK)]
    assert found[0].detail == (f'2.13.0 in its own environment, the Jupyter kernel "Python (PyTorch)" ({python}); '
                               f"check it with {python} -m invoke doctor")
    # `invoke train --trainer torch` there names the environment to run it in.
    from classifier.machinery.torch_runs import import_torch

    with pytest.raises(UserError, match=re.escape(f"in its own environment here: run `{python} -m invoke train ... "
                                                  '--trainer torch` (notebooks: the kernel "Python (PyTorch)")')):
        import_torch()
    (kernel / "kernel.json").unlink()  # without the kernel: the warning, as before
    assert [(check.name, check.status) for check in checks.check_torch()] == [("torch", WARN)]


def _rows(checks):
    return {check.name: (check.status, check.detail, check.fix) for check in checks}


def test_tf_keras_missing_in_the_lab_image_is_a_warning(monkeypatch):
    """The image does not install requirements/course.lock: there `invoke course` with TensorFlow is a known gap."""
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    monkeypatch.setenv("LAB_IMAGE", "classifier-lab:cpu")
    rows = _rows(checks.check_task_modules())
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
    from classifier.machinery import docker_engine

    # A docker without the compose plugin, and docker-compose 1.29 beside it.
    monkeypatch.setenv("PATH", _fake_commands(
        tmp_path / "bin",
        docker='[ "$1" = compose ] && exit 1\n[ "$1" = info ] && echo \'{"runc":{}}\'\nexit 0',
        docker_compose='echo "docker-compose version 1.29.2, build 5becea4c"'))
    monkeypatch.delenv("LAB_IMAGE", raising=False)
    assert docker_engine.compose_command() == ["docker-compose"]
    rows = _rows(checks.check_host_docker())
    assert rows["docker compose"] == (OK, "docker-compose version 1.29.2, build 5becea4c", "")
    (tmp_path / "bin" / "docker-compose").unlink()  # neither: the warning, with both ways to fix it
    assert rows != _rows(checks.check_host_docker())
    assert _rows(checks.check_host_docker())["docker compose"] == (
        WARN, "missing", "install the docker-compose-plugin (Compose v2), or docker-compose 1.28+")


@pytest.mark.skipif(sys.platform == "win32", reason="the fake nvidia-smi is a shell script")
def test_nvidia_smi_facts_read_the_gpus_the_driver_and_its_cuda(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _fake_commands(tmp_path / "bin", nvidia_smi=(
        'if [ "$1" = "--query-gpu=name,driver_version" ]; then\n'
        '  printf "NVIDIA H100 80GB HBM3, 550.54.15\\nNVIDIA H100 80GB HBM3, 550.54.15\\n"; exit 0\nfi\n'
        'echo "| NVIDIA-SMI 550.54.15     Driver Version: 550.54.15     CUDA Version: 12.4     |"')))
    assert checks.nvidia_smi_facts() == {"gpus": "NVIDIA H100 80GB HBM3, NVIDIA H100 80GB HBM3",
                                         "driver": "550.54.15", "cuda": "12.4"}
    # A driver that fails (no device, as in a container started without --gpus): no facts, not a traceback.
    (tmp_path / "bin" / "nvidia-smi").write_text("#!/bin/sh\necho 'No devices were found'\nexit 9\n", encoding="utf-8")
    assert checks.nvidia_smi_facts() is None


def test_disk_check_warns_and_fails_by_free_space(tmp_path):
    # The thresholds around this folder's real free space: the same folder is OK, WARN and FAIL.
    assert [check.status for check in checks.check_disk(tmp_path, warn_below_gb=0, fail_below_gb=0)] == [OK]
    warn = checks.check_disk(tmp_path, warn_below_gb=1e9, fail_below_gb=0)[0]
    assert warn.status == WARN and warn.detail.endswith("GB free") and "old runs/" in warn.fix
    assert checks.check_disk(tmp_path / "new" / "runs", warn_below_gb=1e9, fail_below_gb=1e9)[0].status == FAIL


def test_conv2d_probe_runs_on_every_device_tensorflow_sees():
    tf = pytest.importorskip("tensorflow")
    rows = {check.name: check for check in checks.check_tensorflow()}
    devices = [device.name for device in tf.config.list_logical_devices() if device.device_type in ("CPU", "GPU")]
    assert {f"conv2d {device}": (OK, "forward and backward pass ran") for device in devices} == {
        name: (check.status, check.detail) for name, check in rows.items() if name.startswith("conv2d ")}
    assert rows["tensorflow build"].status == INFO
