"""The GPU image's decisions, made here by their real functions with a GPU described to them.

    python -m pytest tests/test_gpu_decisions.py -q

Only the GPU runner (.github/workflows/gpu.yml) has a GPU. Each decision that
takes another branch there is driven here through the function that makes it,
with what the GPU image shows it: TensorFlow listing a GPU; `tensorflow`
(the CUDA build, requirements/gpu.lock) installed instead of `tensorflow-cpu`;
in /opt/venv-torch, PyTorch's CUDA build beside TensorFlow's CPU one. The
tests of tests/test_recipes.py, test_checks.py and test_platforms.py that read
a precision or a package name from their environment then run once more in
that described environment, so that a wrong branch fails on a CPU first.
One test reads gpu.yml itself: every `invoke` command it runs names a task
of tasks.py with flags that task takes.
"""

from __future__ import annotations

import platform
import re
import shlex
import sys
import textwrap
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pytest

import test_checks
import test_platforms
import test_recipes
from classifier.config import make_config
from classifier.machinery import checks as doctor  # the checks `invoke doctor` runs
from classifier.machinery import numerics, recipes
from classifier.machinery.locks import locked_versions
from conftest import ROOT

GPU_LOCK = ROOT / "requirements" / "gpu.lock"
WORKFLOW = ROOT / ".github" / "workflows" / "gpu.yml"
# The GPU image is built for x86-64 only (docker/Dockerfile refuses arm64/gpu).
GPU_IMAGE_UNAME = "Linux x86_64"
x86_64_only = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                                 reason="the GPU image is x86-64 only; its lock choice is described on x86-64")


@pytest.fixture
def gpu_visible(monkeypatch):
    """TensorFlow lists one GPU, physical and logical, beside this machine's CPU, as in the GPU image."""
    import tensorflow as tf

    def with_gpu(real, gpu):
        def listing(device_type=None):
            found = [device for device in real(device_type) if device.device_type != "GPU"]
            return found + ([gpu] if device_type in (None, "GPU") else [])
        return listing

    monkeypatch.setattr(tf.config, "list_physical_devices", with_gpu(
        tf.config.list_physical_devices, tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")))
    monkeypatch.setattr(tf.config, "list_logical_devices", with_gpu(
        tf.config.list_logical_devices, tf.config.LogicalDevice(name="/device:GPU:0", device_type="GPU")))


@pytest.fixture
def gpu_image_packages(monkeypatch):
    """The GPU image's TensorFlow environment as importlib.metadata shows it to doctor: gpu.lock's pins,
    so `tensorflow` (the CUDA build) and no `tensorflow-cpu`, and no torch (it has an environment of its own)."""
    pins = locked_versions(GPU_LOCK)

    def version(name: str) -> str:
        key = name.lower().replace("_", "-")
        if key not in pins:
            raise metadata.PackageNotFoundError(name)
        return pins[key]

    # importlib.metadata's own function, which doctor and the tests' helpers call at the time they look.
    monkeypatch.setattr(metadata, "version", version)
    return pins


@pytest.mark.parametrize("cpu_bfloat16", [False, True], ids=["cpu-without-bf16", "cpu-with-bf16"])
def test_on_a_gpu_the_fast_recipe_is_bfloat16_and_portable_numerics_float32(gpu_visible, monkeypatch, cpu_bfloat16):
    from tensorflow import keras

    from classifier.machinery.distribute import build_model_and_optimizer

    # Whatever the host CPU computes, the GPU decides under fastest, and portable is float32 everywhere.
    monkeypatch.setattr(numerics, "native_bfloat16", lambda environ=None: cpu_bfloat16)
    assert recipes.use_mixed_precision(make_config(recipe="fast", numerics="fastest"))
    assert not recipes.use_mixed_precision(make_config(recipe="fast", numerics="portable"))
    assert not recipes.use_mixed_precision(make_config(recipe="lecture", numerics="fastest"))
    for numerics_mode, expected in (("fastest", "mixed_bfloat16"), ("portable", "float32")):
        config = make_config(recipe="fast", model="fast_cnn", numerics=numerics_mode)
        model, _, policy = build_model_and_optimizer(config, (28, 28, 1), 10, 100)
        assert (policy, model.get_layer("conv2").dtype_policy.name) == (expected, expected), numerics_mode
        assert model.get_layer("dense2").dtype_policy.name == "float32"  # the softmax stays float32
        assert keras.mixed_precision.global_policy().name == "float32"


def test_recipe_precision_tests_pass_with_a_gpu_described(gpu_visible):
    """tests/test_recipes.py's precision test, whose expectations come from the devices TensorFlow lists."""
    assert test_recipes.gpu_here()  # the description reaches the test's own reading of the machine
    test_recipes.test_only_the_fast_recipe_computes_in_bfloat16_and_never_under_portable_numerics()


@x86_64_only
def test_doctor_checks_the_gpu_image_against_gpu_lock(gpu_image_packages, tmp_path, monkeypatch):
    checks = doctor.check_versions(uname=GPU_IMAGE_UNAME)
    statuses = {check.name: check.status for check in checks}
    assert "expects requirements/gpu.lock, requirements/lab.lock, requirements/torch-gpu.lock" in next(
        check.detail for check in checks if check.name == "platform")
    assert {name: statuses.get(name) for name in ("tensorflow", "keras", "numpy")} == dict.fromkeys(
        ("tensorflow", "keras", "numpy"), doctor.OK)
    assert "tensorflow-cpu" not in statuses
    # Another TensorFlow than gpu.lock's is named with gpu.lock's fix.
    lock = GPU_LOCK.read_text(encoding="utf-8")
    (tmp_path / "gpu.lock").write_text(lock.replace("\ntensorflow==", "\ntensorflow==0.0.1 \\\n    # was "),
                                       encoding="utf-8")
    tensorflow = next(check for check in doctor.check_versions(tmp_path, uname=GPU_IMAGE_UNAME)
                      if check.name == "tensorflow")
    assert tensorflow.status == doctor.FAIL and "lock says 0.0.1" in tensorflow.detail
    assert "-r requirements/gpu.lock" in tensorflow.fix
    # torch is not in TensorFlow's environment there; without its kernel, doctor names the CUDA build's lock.
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setattr(doctor, "torch_kernel_python", lambda: None)
    torch = doctor.check_torch()
    assert [check.status for check in torch] == [doctor.WARN] and "requirements/torch-gpu.lock" in torch[0].fix


@x86_64_only
def test_doctor_tests_pass_with_the_gpu_image_described(gpu_image_packages, tmp_path):
    """tests/test_checks.py's and test_platforms.py's lock tests, whose package names come from this environment."""
    assert test_checks.expected_lock() == GPU_LOCK
    assert test_checks.tensorflow_package(GPU_LOCK) == "tensorflow"
    test_checks.test_lock_file_is_read()
    test_checks.test_installed_versions_match_the_lock()
    test_checks.test_version_mismatch_is_a_failure_with_its_fix(tmp_path)
    assert test_platforms.tensorflow_distribution() == "tensorflow"
    test_platforms.test_doctor_names_the_architecture_and_the_locks_it_expects()


def run_scripts(workflow: str) -> list[str]:
    """The shell scripts of a workflow's `run:` steps (one line, or a `|` block), read without a YAML library."""
    lines, scripts = workflow.splitlines(), []
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)(?:- )?run: ?(.*)$", line)
        if not match:
            continue
        if match.group(2) not in ("|", ">"):
            scripts.append(match.group(2))
            continue
        block = []
        for following in lines[index + 1:]:
            if following.strip() and len(following) - len(following.lstrip()) <= len(match.group(1)):
                break
            block.append(following)
        scripts.append(textwrap.dedent("\n".join(block)))
    return scripts


def invoke_calls(script: str) -> list[list[str]]:
    """Each `invoke ARGS` (also `python -m invoke ARGS`) in a shell script, as its words after `invoke`."""
    calls = []
    for line in re.sub(r"\\\n", " ", script).splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # a line of a here-document's Python, not a command
            continue
        for start, word in enumerate(words):
            if word == "invoke" or word.endswith("/invoke"):
                rest = words[start + 1:]
                ends = [index for index, item in enumerate(rest) if item in ("&&", "||", ";", "|")]
                calls.append(rest[:ends[0]] if ends else rest)
    return calls


def test_every_invoke_command_of_the_gpu_workflow_is_a_task_with_its_flags():
    from invoke import Collection
    from invoke.parser import Parser

    import tasks

    parser = Parser(contexts=Collection.from_module(tasks).to_contexts())
    pending = [call for script in run_scripts(WORKFLOW.read_text(encoding="utf-8")) for call in invoke_calls(script)]
    seen = []
    while pending:
        call = pending.pop(0)
        # A wrong task or flag is invoke's own ParseError ("No idea what '--bogus' is!"), naming it.
        for context in parser.parse_argv(call):
            flags = {name: argument.value for name, argument in context.args.items() if argument.got_value}
            seen.append((context.name, flags))
            if context.name == "shell":  # the command it runs in the container is checked the same way
                assert flags.get("variant") == "gpu", call
                pending += invoke_calls(flags["command"])
    names = {name for name, _ in seen}
    assert {"build", "shell", "doctor", "data", "train", "down"} <= names, names
    assert ("build", {"variant": "gpu"}) in seen
    trainings = [flags for name, flags in seen if name == "train"]
    assert {flags["trainer"] for flags in trainings} == {"$trainer", "torch"}
    assert all(flags["numerics"] == "$numerics" for flags in trainings)
    # The loops give those variables these values, and the browser test takes the lab `invoke lab` starts.
    text = WORKFLOW.read_text(encoding="utf-8")
    assert "for numerics in fastest portable; do" in text and "for trainer in fit tape; do" in text
    assert "BROWSER_LAB=invoke BROWSER_LAB_VARIANT=gpu" in text


@x86_64_only
def test_doctor_in_the_gpu_images_torch_environment_checks_torch_against_torch_gpu_lock(monkeypatch):
    """/opt/venv-torch, which doctor's own hint says to check (`/opt/venv-torch/bin/python -m invoke doctor`):
    TensorFlow's CPU build (cpu.lock) beside PyTorch's CUDA build, whose pin is torch-gpu.lock's 2.13.0, not 2.13.0+cpu."""
    torch = pytest.importorskip("torch")
    real_version = metadata.version
    torch_gpu = locked_versions(ROOT / "requirements" / "torch-gpu.lock")["torch"]
    monkeypatch.setattr(metadata, "version", lambda name: torch_gpu if name == "torch" else real_version(name))
    monkeypatch.setattr(torch.version, "cuda", "13.0")  # a CUDA build, on a machine without a GPU
    checks = {check.name: check for check in doctor.check_torch()}
    assert (checks["torch"].status, checks["torch"].detail) == (doctor.OK, f"{torch_gpu} (as locked)")
    assert checks["torch build"].detail.startswith("CUDA 13.0")


def test_the_browser_tests_invoke_lab_commands_are_tasks_with_their_flags(monkeypatch, tmp_path):
    """BROWSER_LAB=invoke (the workflow's browser step): test_browser.invoke_lab starts the lab with `invoke lab`
    and, when that fails, stops it with `invoke down`; both are tasks with those flags."""
    from invoke import Collection
    from invoke.parser import Parser

    import tasks
    import test_browser

    calls = []

    def record(command, **kwargs):
        calls.append(command[3:])  # after [python, -m, invoke]
        return SimpleNamespace(returncode=1, stdout="", stderr="stopped here")

    monkeypatch.setattr(test_browser.subprocess, "run", record)
    monkeypatch.setattr(test_browser.os, "getuid", lambda: 1000)
    with pytest.raises(AssertionError, match="stopped here"):
        test_browser.invoke_lab(tmp_path, "gpu")
    assert [call[:3] for call in calls] == [["lab", "--variant", "gpu"], ["down", "--variant", "gpu"]]
    parser = Parser(contexts=Collection.from_module(tasks).to_contexts())
    for call in calls:
        parser.parse_argv(call)  # invoke's ParseError names an unknown task or flag
