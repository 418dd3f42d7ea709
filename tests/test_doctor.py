"""`invoke doctor` passes on a healthy environment and names planted faults with their fix."""

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from classifier.config import UserError
from classifier.doctor import FAIL, OK, WARN, Check, check_datasets, check_graphviz, check_versions, locked_versions, python_check
from conftest import FASHION_MNIST_DEBIAN, run_invoke


def test_lock_file_is_read():
    pins = locked_versions(Path(__file__).parent.parent / "requirements" / "cpu.lock")
    assert pins["tensorflow-cpu"] == "2.21.0" and pins["keras"].startswith("3.")


def test_installed_versions_match_the_lock():
    checks = {check.name: check.status for check in check_versions()}
    assert {name: checks[name] for name in ("tensorflow-cpu", "keras", "numpy")} == dict.fromkeys(
        ("tensorflow-cpu", "keras", "numpy"), OK)


def test_python_other_than_the_locks_is_a_warning_with_its_fix():
    assert python_check((3, 11, 7)) == Check("python", OK, "3.11.7")
    other = python_check((3, 12, 1))
    assert (other.status, other.detail) == (WARN, "3.12.1") and "3.11" in other.fix


def test_version_mismatch_is_a_failure_with_its_fix(tmp_path):
    lock = (Path(__file__).parent.parent / "requirements" / "cpu.lock").read_text()
    (tmp_path / "cpu.lock").write_text(lock.replace("keras==", "keras==0.0.1 \\\n    # was "))
    keras = next(check for check in check_versions(tmp_path) if check.name == "keras")
    assert keras.status == FAIL and "lock says 0.0.1" in keras.detail and "--require-hashes" in keras.fix


def test_corrupted_data_file_fails_with_the_fix(tiny_dataset, tmp_path):
    from classifier.download import import_from

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
    assert "OK    conv2d /device:CPU:0" in result.stdout


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


def test_torch_in_its_own_kernel_environment_is_found_by_doctor_and_named_by_train(tmp_path, monkeypatch):
    # The GPU image: torch is not importable here (TensorFlow's environment) but the "pytorch" kernel's Python has it.
    from classifier import doctor

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
    from classifier.torch_run import import_torch

    with pytest.raises(UserError, match=re.escape(f"in its own environment here: run `{python} -m invoke train ... "
                                                  '--trainer torch` (notebooks: the kernel "Python (PyTorch)")')):
        import_torch()
    (kernel / "kernel.json").unlink()  # without the kernel: the warning, as before
    assert [(check.name, check.status) for check in doctor.check_torch()] == [("torch", WARN)]
