"""`invoke doctor`: check the environment and say, for each problem, how to fix it.

    invoke doctor              # exit 0 when nothing is broken, 1 otherwise

Works on the host, in the container and in CI. A check is OK, INFO (worth
knowing, e.g. no GPU), WARN (something is missing that a task will need) or
FAIL (broken: training or the tests will not work as promised).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from classifier.machinery import docker_engine
from classifier.commands.course import INSTALL_HINT as LEGACY_KERAS_HINT
from classifier.config import PROJECT_ROOT, UserError
from classifier.machinery import platforms
from classifier.machinery.torch_runs import torch_kernel_python

OK, INFO, WARN, FAIL = "OK", "INFO", "WARN", "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # OK, INFO, WARN or FAIL
    detail: str
    fix: str = ""


def locked_versions(lock: Path) -> dict[str, str]:
    """{package: version} from a hash-locked requirements file."""
    pins = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", line)
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def check_versions(lock_dir: Path = PROJECT_ROOT / "requirements", uname: str | None = None) -> list[Check]:
    """Python, this machine's platform, and TensorFlow and Keras against the lock file it expects.

    Args:
        lock_dir: the folder of the lock files.
        uname: what `uname -sm` prints (default: this machine's), e.g. "Linux aarch64".
    """
    checks = [python_check(sys.version_info[:3])]
    uname = uname or f"{platform.system()} {platform.machine()}"
    machine = platforms.by_uname(uname)
    if machine is None:
        return checks + [Check("platform", FAIL, f"{uname}: the lab has no lock files for it",
                               f"use a supported machine ({platforms.supported()}) or the lab container")]
    package, lock_name, torch_lock = _expected_locks(machine)
    checks.append(Check("platform", OK, f"{uname} ({machine.name}): expects {lock_name}, "
                                        f"{machine.lab_lock}, {torch_lock}"))
    lock = lock_dir / Path(lock_name).name
    if not lock.is_file():
        return checks + [Check("lock file", FAIL, f"{lock} is missing", "restore it from git: git checkout requirements/")]
    pins = locked_versions(lock)
    fix = f"reinstall from the lock: pip install --require-hashes -r {lock_name} (or ./setup.sh)"
    for package in (package, "keras", "numpy"):
        installed, wanted = platforms.installed_version(package), pins.get(package)
        if installed is None:
            checks.append(Check(package, FAIL, f"not installed (lock: {wanted})", fix))
        elif wanted and installed != wanted:
            checks.append(Check(package, FAIL, f"{installed} installed, lock says {wanted}", fix))
        else:
            checks.append(Check(package, OK, f"{installed} (as locked)"))
    return checks


def _expected_locks(machine: platforms.Platform) -> tuple[str, str, str]:
    """(TensorFlow's package, its lock, PyTorch's lock) for the TensorFlow installed on `machine`.

    On x86-64 an installed `tensorflow` without `tensorflow-cpu` is the CUDA
    build (LAB_VARIANT=gpu); on arm64 `tensorflow` is the CPU build.
    """
    installed = platforms.installed_version
    if machine.tensorflow == "tensorflow-cpu" and installed("tensorflow") and not installed("tensorflow-cpu"):
        return "tensorflow", "requirements/gpu.lock", "requirements/torch-gpu.lock"
    return machine.tensorflow, machine.cpu_lock, machine.torch_lock


def python_check(version: tuple[int, ...]) -> Check:
    """The lock files are made for Python 3.11: another version is a warning with the fix."""
    text = ".".join(str(part) for part in version)
    if tuple(version[:2]) == (3, 11):
        return Check("python", OK, text)
    return Check("python", WARN, text, "the locks are made for Python 3.11: use python3.11 (the container has it)")


def check_tensorflow() -> list[Check]:
    """GPUs, CUDA/cuDNN build, memory growth, and a Conv2D forward and backward pass per device.

    Without TensorFlow (a torch-only environment such as the README's
    .venv-torch) this is one FAIL with its fix, and the other checks still run.
    """
    try:
        import tensorflow as tf
    except ImportError as error:
        return [Check("tensorflow", FAIL, f"not importable ({error}): --trainer fit/tape, the notebooks and "
                      "invoke export need it (--trainer torch does not)",
                      "use the lab's .venv (./setup.sh makes it), or: pip install --require-hashes -r "
                      "requirements/cpu.lock (gpu.lock on a GPU machine); "
                      "a torch-only .venv-torch runs --trainer torch only")]

    from classifier.lecture.runtime import gpu_config

    checks = []
    build = tf.sysconfig.get_build_info()
    cuda = build.get("cuda_version")
    checks.append(Check("tensorflow build", INFO,
                        f"CUDA {cuda}, cuDNN {build.get('cudnn_version')}" if build.get("is_cuda_build") else "CPU-only build"))
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        gpu_config()
        checks.append(Check("gpus", OK, ", ".join(gpu.name for gpu in gpus)))
        for gpu in gpus:
            growth = tf.config.experimental.get_memory_growth(gpu)
            checks.append(Check(f"memory growth {gpu.name}", OK if growth else WARN, "on" if growth else "off",
                                "" if growth else "set TF_FORCE_GPU_ALLOW_GROWTH=true or call gpu_config() first"))
    elif shutil.which("nvidia-smi") and build.get("is_cuda_build"):
        checks.append(Check("gpus", FAIL, "nvidia-smi sees a GPU but TensorFlow does not",
                            "run the container with --gpus all (compose: deploy.resources.reservations.devices); "
                            "outside it, install the gpu lock: LAB_VARIANT=gpu ./setup.sh"))
    else:
        checks.append(Check("gpus", INFO, "none visible: training runs on the CPU"))
    for device in [d.name for d in tf.config.list_logical_devices() if d.device_type in ("CPU", "GPU")]:
        checks.append(_conv2d_check(tf, device))
    return checks


def _conv2d_check(tf, device: str) -> Check:
    """The lecture's 'No algorithm worked!' shows up on the first Conv2D: run one, both ways."""
    try:
        with tf.device(device):
            images = tf.random.stateless_uniform((2, 16, 16, 3), seed=(1, 2))
            kernel = tf.Variable(tf.random.stateless_normal((3, 3, 3, 4), seed=(3, 4)))
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.nn.conv2d(images, kernel, strides=1, padding="SAME") ** 2)
            gradient = tape.gradient(loss, kernel)
            if not bool(tf.reduce_all(tf.math.is_finite(gradient))):
                raise RuntimeError("the gradient is not finite")
    except Exception as error:  # noqa: BLE001 - any failure here is the finding
        return Check(f"conv2d {device}", FAIL, str(error).splitlines()[0][:160],
                     "turn on GPU memory growth (TF_FORCE_GPU_ALLOW_GROWTH=true) and check that the driver "
                     "supports the CUDA version TensorFlow was built with (nvidia-smi)")
    return Check(f"conv2d {device}", OK, "forward and backward pass ran")


def check_torch(lock_dir: Path = PROJECT_ROOT / "requirements") -> list[Check]:
    """PyTorch (the lecture's part 2): import, version against its lock, CUDA build, and a
    Conv2d forward and backward pass on every device torch sees."""
    machine = platforms.current() or platforms.PLATFORMS[0]
    torch_lock = lock_dir / Path(_expected_locks(machine)[2]).name
    fix = f"./setup.sh installs it, or: pip install --require-hashes -r requirements/{torch_lock.name}"
    try:
        import torch
    except ImportError as error:
        if kernel := _torch_kernel():
            python, version = kernel
            return [Check("torch", OK, f"{version} in its own environment, the Jupyter kernel \"Python (PyTorch)\" "
                                       f"({python}); check it with {python} -m invoke doctor")]
        return [Check("torch", WARN, f"not importable ({error}): invoke train --trainer torch and notebook 04 need it", fix)]
    if torch.version.cuda and machine is platforms.PLATFORMS[0]:
        # PyTorch's CUDA build beside TensorFlow's CPU one (the GPU image's /opt/venv-torch) is torch-gpu.lock's.
        torch_lock = lock_dir / "torch-gpu.lock"
    wanted = locked_versions(torch_lock).get("torch") if torch_lock.is_file() else None
    # The installed distribution's version is the lock's (a local build's torch.__version__ may add "+cpu").
    installed = platforms.installed_version("torch") or torch.__version__
    if wanted and installed != wanted:
        checks = [Check("torch", FAIL, f"{installed} installed, lock says {wanted}", fix)]
    else:
        checks = [Check("torch", OK, f"{installed} (as locked{_release_note(machine)})" if wanted else installed)]
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    checks.append(Check("torch build", INFO, f"CUDA {torch.version.cuda}, cuDNN {cudnn}" if torch.version.cuda
                        else "CPU-only build"))
    devices = ["cpu"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if torch.version.cuda and not torch.cuda.is_available() and shutil.which("nvidia-smi"):
        checks.append(Check("torch gpus", FAIL, "nvidia-smi sees a GPU but torch does not",
                            "check that the driver supports CUDA " + str(torch.version.cuda) + " (nvidia-smi)"))
    for device in devices:
        checks.append(_torch_conv2d_check(torch, device))
    return checks


def _release_note(machine: platforms.Platform) -> str:
    """Where this platform's PyTorch is another release than x86-64's (aarch64 Linux: 2.9.1), say so."""
    x86 = platforms.PLATFORMS[0].torch
    if machine.torch.split("+")[0] == x86.split("+")[0]:
        return ""
    return f"; x86-64 Linux has {x86}: PyPI's aarch64 torch 2.13 is a CUDA build"


def _torch_kernel() -> tuple[str, str] | None:
    """(the "pytorch" kernel's Python, the torch version it imports) where that is another environment, else None."""
    python = torch_kernel_python()
    if python is None:
        return None
    try:
        result = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                                text=True, encoding="utf-8", errors="replace", timeout=300)
    except OSError:
        return None
    return (python, result.stdout.strip()) if result.returncode == 0 and result.stdout.strip() else None


def _torch_conv2d_check(torch, device: str) -> Check:
    """One Conv2d forward and backward pass on `device`, as the first training step makes."""
    try:
        generator = torch.Generator().manual_seed(1)
        conv = torch.nn.Conv2d(3, 4, kernel_size=3, padding=1).to(device)
        images = torch.rand(2, 3, 16, 16, generator=generator).to(device)
        loss = (conv(images) ** 2).sum()
        loss.backward()
        if not bool(torch.isfinite(conv.weight.grad).all()):
            raise RuntimeError("the gradient is not finite")
    except Exception as error:  # noqa: BLE001 - any failure here is the finding
        return Check(f"torch conv2d {device}", FAIL, str(error).splitlines()[0][:160],
                     "check that the driver supports torch's CUDA version (nvidia-smi) and that no other "
                     "process holds all GPU memory")
    return Check(f"torch conv2d {device}", OK, "forward and backward pass ran")


# The modules a task imports beyond TensorFlow and Keras, and the task: (module, what needs it, lock that installs it).
TASK_MODULES = (
    ("onnxruntime", "invoke export --format onnx", "requirements/lab.lock"),
    ("onnx", "invoke export --format onnx", "requirements/lab.lock"),
    ("tf2onnx", "invoke export --format onnx", "requirements/lab.lock"),
    ("ai_edge_litert", "invoke export --format tflite", "requirements/lab.lock"),
    ("tf_keras", "invoke course (the course's TensorFlow scripts)", "requirements/course.lock"),
)


def importable(module: str) -> bool:
    """Whether `module` can be found for import (looked up, not imported), as the tasks that need it look it up."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module that sys.modules holds as None or without a spec
        return False


def check_task_modules() -> list[Check]:
    """The packages `invoke export` and `invoke course` import, which ./setup.sh installs beside TensorFlow.

    A missing one fails (the task that needs it would stop at once); tf_keras
    in the lab image, which does not install requirements/course.lock, is a warning.
    """
    checks = []
    for module, needed_by, lock in TASK_MODULES:
        if importable(module):
            checks.append(Check(module, OK, "importable"))
            continue
        fix = LEGACY_KERAS_HINT if module == "tf_keras" else f"pip install --require-hashes -r {lock} (or ./setup.sh)"
        status = WARN if module == "tf_keras" and in_container() else FAIL
        checks.append(Check(module, status, f"not importable: {needed_by} needs it", fix))
    return checks


def check_graphviz() -> Check:
    from classifier.machinery.report import graphviz_missing

    why = graphviz_missing()
    if why:
        return Check("graphviz", FAIL, why, "apt-get install graphviz (the container has it)")
    return Check("graphviz", OK, shutil.which("dot"))


def check_datasets(data_dir: Path) -> list[Check]:
    """Each registered dataset: absent (fine), verified, or damaged (with the fix); and the
    temporary files a killed import or download left behind."""
    from classifier.machinery.datasets import DATASETS
    from classifier.machinery.download import dataset_folder, problems, stale_temporaries

    if Path(data_dir).exists() and not Path(data_dir).is_dir():
        return [Check("data folder", FAIL, f"{data_dir} is a file, not a folder",
                      "point --data-dir or CLASSIFIER_DATA_DIR at a folder (default ./data), or move the file away")]
    checks = []
    for dataset in DATASETS.values():
        folder = dataset_folder(dataset, data_dir)
        if stale := stale_temporaries(dataset, data_dir):
            megabytes = sum(path.stat().st_size for path in stale) / 1e6
            checks.append(Check(f"data {dataset.name} leftovers", WARN,
                                f"{len(stale)} temporary file(s), {megabytes:.1f} MB, left by an interrupted import "
                                f"or download: {', '.join(path.name for path in stale)}",
                                f"invoke data --dataset {dataset.name} removes them (with --from PATH as well)"))
        present = [f for f in dataset.files if (folder / f.name).exists()]
        if not present:
            checks.append(Check(f"data {dataset.name}", INFO, f"not in {data_dir}",
                                f"invoke data --dataset {dataset.name} when you need it"))
            continue
        found = problems(dataset, data_dir)
        if found:
            checks.append(Check(f"data {dataset.name}", FAIL, "; ".join(found),
                                f"invoke data --dataset {dataset.name} (replaces damaged files with verified ones), "
                                f"or --from PATH for a copy on disk"))
        else:
            checks.append(Check(f"data {dataset.name}", OK, f"{len(dataset.files)} file(s) verified in {folder}"))
    return checks


def check_disk(*folders: Path, warn_below_gb: float = 2.0, fail_below_gb: float = 0.2) -> list[Check]:
    """Free space where each folder is (or will be made); a folder path that is, or lies under, a file fails."""
    checks = []
    for folder in folders:
        existing = next((p for p in [Path(folder), *Path(folder).parents] if p.exists()), Path("/"))
        if not existing.is_dir():
            where = "is a file" if existing == Path(folder) else f"cannot be made: {existing} is a file"
            checks.append(Check(f"disk {folder}", FAIL, f"{folder} {where}, not a folder",
                                "point --runs-dir/--data-dir (or CLASSIFIER_RUNS_DIR/CLASSIFIER_DATA_DIR) at a "
                                "folder, or move the file away"))
            continue
        free = shutil.disk_usage(existing).free / 1e9
        status = FAIL if free < fail_below_gb else WARN if free < warn_below_gb else OK
        checks.append(Check(f"disk {folder}", status, f"{free:.1f} GB free",
                            "" if status == OK else "free space: old runs/ folders and data/ are safe to move"))
    return checks


def in_container() -> bool:
    # The lab image sets LAB_IMAGE; /.dockerenv would also match CI sandboxes that are containers.
    return bool(os.environ.get("LAB_IMAGE"))


def check_host_docker() -> list[Check]:
    """Docker, Compose (v2, or docker-compose 1.x as the container tasks accept it) and the NVIDIA runtime,
    for running the lab container (on the host)."""
    if in_container():
        return check_container()
    checks = []
    docker = shutil.which("docker")
    if not docker:
        return [Check("docker", WARN, "not installed", "install Docker Engine to use the lab container")]
    try:
        compose = _run(docker_engine.compose_command() + ["version"])  # the one the container tasks will run
    except UserError:
        compose = None
    checks.append(Check("docker compose", OK if compose else WARN, compose or "missing",
                        "" if compose else "install the docker-compose-plugin (Compose v2), or docker-compose 1.28+"))
    info = _run([docker, "info", "--format", "{{json .Runtimes}}"])
    if info is None:
        checks.append(Check("docker engine", WARN, "not reachable", "start it: sudo systemctl start docker"))
    else:
        nvidia = "nvidia" in info
        checks.append(Check("nvidia runtime", OK if nvidia else INFO, "present" if nvidia else "absent",
                            "" if nvidia else "for the GPU image install the NVIDIA Container Toolkit "
                            "and run: sudo nvidia-ctk runtime configure --runtime=docker"))
    return checks


def nvidia_smi_facts() -> dict[str, str] | None:
    """What `nvidia-smi` reports: GPU names, driver version, the newest CUDA the driver supports.

    Returns:
        {"gpus": ..., "driver": ..., "cuda": ...}, or None when nvidia-smi is
        missing or fails (inside a container: the NVIDIA runtime did not mount it).
    """
    if not shutil.which("nvidia-smi"):
        return None
    query = _run_all(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    header = _run_all(["nvidia-smi"])
    if not query:
        return None
    rows = [[part.strip() for part in line.split(",")] for line in query.splitlines() if line.strip()]
    cuda = re.search(r"CUDA Version:\s*([0-9.]+)", header or "")
    return {"gpus": ", ".join(row[0] for row in rows), "driver": rows[0][-1], "cuda": cuda.group(1) if cuda else "?"}


def check_container() -> list[Check]:
    """Inside the lab container: the image, and for the GPU image what the NVIDIA runtime gave it.

    The NVIDIA Container Toolkit mounts the host driver, `nvidia-smi` and the
    /dev/nvidia* devices into a container started with a GPU; the CUDA that
    nvidia-smi names is the newest the driver supports; its major version must
    be at least that of the CUDA TensorFlow was built with (CUDA's minor
    version compatibility covers the rest: any 12.x driver, 525 or newer, runs CUDA 12.x).
    """
    checks = [Check("container", INFO, f"inside the lab container {os.environ['LAB_IMAGE']}")]
    variant = os.environ.get("LAB_VARIANT", "")
    facts = nvidia_smi_facts()
    if facts is None:
        if variant == "gpu":
            checks.append(Check("nvidia runtime", FAIL, "no GPU in this container (nvidia-smi is missing or fails)",
                                "start the GPU image with its GPU: `invoke lab` or `docker compose up` (compose reserves "
                                "it), or `docker run --gpus all`; the host needs the NVIDIA Container Toolkit"))
        else:
            checks.append(Check("nvidia runtime", INFO, "not used: this is the CPU image"))
        return checks
    checks.append(Check("nvidia runtime", OK, f"GPU(s) {facts['gpus']}"))
    built_for = _tensorflow_cuda()
    too_old = bool(built_for) and facts["cuda"] != "?" and _major(facts["cuda"]) < _major(built_for)
    checks.append(Check("nvidia driver", FAIL if too_old else OK,
                        f"{facts['driver']}, supports CUDA {facts['cuda']}"
                        + (f" (TensorFlow is built for CUDA {built_for})" if built_for else ""),
                        f"update the host's NVIDIA driver to one that supports CUDA {built_for}" if too_old else ""))
    return checks


def _tensorflow_cuda() -> str | None:
    try:
        import tensorflow as tf
    except ImportError:
        return None
    return tf.sysconfig.get_build_info().get("cuda_version")


def _major(version: str) -> int:
    return int(version.split(".")[0])


def _run_all(command: list[str]) -> str | None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def _run(command: list[str]) -> str | None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else None


def diagnose(data_dir: Path, runs_dir: Path) -> list[Check]:
    """Every check, in the order a person would fix them."""
    return [
        *check_versions(),
        *check_tensorflow(),
        *check_task_modules(),
        *check_torch(),
        check_graphviz(),
        *check_datasets(data_dir),
        *check_disk(data_dir, runs_dir),
        *check_host_docker(),
    ]


def report(checks: list[Check]) -> bool:
    """Print the checks as a table; True when none failed."""
    width = max(len(check.name) for check in checks)
    for check in checks:
        print(f"{check.status:<4}  {check.name:<{width}}  {check.detail}")
        if check.fix and check.status in (WARN, FAIL):
            print(f"      {'':<{width}}  fix: {check.fix}")
    failed = [check for check in checks if check.status == FAIL]
    print(f"\n{len(failed)} problem(s) found" if failed else "\nno problems found")
    return not failed
