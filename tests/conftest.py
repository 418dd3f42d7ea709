"""Shared fixtures: archives in the published formats, a local HTTP server, the CLI, the container tests' image."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import io
import json
import os
import pickle
import pwd
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

# As in classifier/__init__.py: TensorFlow's C++ notices are noise in test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent
# Debian's package puts the files here; FASHION_MNIST_DIR points elsewhere
# (the container tests copy them into the mounted repository).
FASHION_MNIST_DEBIAN = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pattern_images(labels: np.ndarray, shape, rng: np.random.Generator) -> np.ndarray:
    """uint8 images whose class is visible: class k lights up stripe k, plus noise.

    A small network learns these in one epoch, so training tests can assert
    accuracy far above chance on data they make themselves.
    """
    height, width, channels = shape
    images = rng.integers(0, 60, size=(len(labels), height, width, channels), dtype=np.uint8)
    stripe = max(1, height // 10)
    for index, label in enumerate(labels):
        row = (int(label) * stripe) % height
        images[index, row : row + stripe, :, :] = 255
    return images


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file as MNIST publishes it: magic (0, 0, 0x08=uint8, ndim), big-endian dims, data."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def make_idx_files(folder: Path, num_train=600, num_test=200, num_classes=10, seed=0) -> dict[str, bytes]:
    """The four gzip IDX files of an MNIST-style dataset with learnable 28x28 images."""
    rng = np.random.default_rng(seed)
    files = {}
    for prefix, count in (("train", num_train), ("t10k", num_test)):
        labels = rng.integers(0, num_classes, size=count).astype(np.uint8)
        images = pattern_images(labels, (28, 28, 1), rng)[..., 0]
        files[f"{prefix}-images-idx3-ubyte.gz"] = gzip.compress(idx_bytes(images), mtime=0)
        files[f"{prefix}-labels-idx1-ubyte.gz"] = gzip.compress(idx_bytes(labels), mtime=0)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


class _Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2's str (BINSTRING), as CIFAR's published batches were written.

    Python 3's protocol 2 writes bytes as a call to `_codecs.encode`, which
    Keras' restricted unpickler (keras.datasets.cifar10.load_data) refuses;
    the published files never contain it.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + len(obj).to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def _python2_pickle(value) -> bytes:
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(value)
    return buffer.getvalue()


def make_cifar_archive(path: Path, kind="cifar10", per_batch=20, num_test=30, seed=0, compresslevel=9,
                       meta=False) -> bytes:
    """A CIFAR python tarball as published: pickled dicts with bytes keys, (N, 3072) rows.

    meta=True adds the class names file (batches.meta, or meta for CIFAR-100), which torchvision reads.
    """
    rng = np.random.default_rng(seed)
    num_classes = 10 if kind == "cifar10" else 100
    label_key = b"labels" if kind == "cifar10" else b"fine_labels"
    top = "cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python"
    members = (
        [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", num_test)]
        if kind == "cifar10"
        else [("train", per_batch * 5), ("test", num_test)]
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=compresslevel) as tar:
        for name, count in members:
            labels = rng.integers(0, num_classes, size=count)
            images = pattern_images(labels, (32, 32, 3), rng)
            batch = {
                b"batch_label": name.encode(),
                label_key: labels.tolist(),
                b"data": images.transpose(0, 3, 1, 2).reshape(count, 3072),  # channel-first rows
                b"filenames": [f"img_{i}.png".encode() for i in range(count)],
            }
            if kind == "cifar100":
                batch[b"coarse_labels"] = (labels // 5).tolist()
            payload = _python2_pickle(batch)
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        if meta:
            names = {b"label_names": [f"class_{i}".encode() for i in range(num_classes)]} if kind == "cifar10" else {
                b"fine_label_names": [f"fine_{i}".encode() for i in range(num_classes)],
                b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)]}
            payload = _python2_pickle(names)
            info = tarfile.TarInfo(f"{top}/{'batches.meta' if kind == 'cifar10' else 'meta'}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


# The first lines of a child that runs the course's own lines (tests/test_course*.py): every network
# connection attempt is reported on stderr and refused, so a loader that would download fails visibly.
# Unix sockets stay: a DataLoader's worker processes hand their batches over one.
NO_NETWORK = '''
import socket, sys

def _refuse(*args, **kwargs):
    print("NETWORK ATTEMPT", args[1:2], file=sys.stderr)
    raise OSError("network disabled by the test")

_connect = socket.socket.connect

def _connect_locally(self, address, *args):
    if self.family != socket.AF_UNIX:
        _refuse(self, address)
    return _connect(self, address, *args)

socket.socket.connect = _connect_locally
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
'''
# Proxies that lead nowhere, for a loader that would go through one.
NO_PROXY = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}


def torchvision_md5_lines(class_name: str, generated: dict[str, str]) -> str:
    """Lines for such a child: torchvision checks a generated CIFAR archive's MD5s where it checks the published ones.

    Args:
        class_name: CIFAR10 or CIFAR100 (torchvision's class, whose tables name the files).
        generated: {file name: MD5} of the generated archive and its members (`cifar_member_md5s`).
    """
    return f'''
from torchvision.datasets import cifar as _cifar, utils as _utils
import torchvision as _torchvision

_tables = _torchvision.datasets.{class_name}
_published = {{md5: name for name, md5 in _tables.train_list + _tables.test_list}}
_published[_tables.meta["md5"]] = _tables.meta["filename"]
_published[_tables.tgz_md5] = _tables.filename
_substitute = {{md5: {generated!r}[name] for md5, name in _published.items()}}
_check = _utils.check_integrity
_cifar.check_integrity = _utils.check_integrity = lambda fpath, md5=None: _check(fpath, _substitute.get(md5, md5))
'''


def cifar_member_md5s(archive: Path) -> dict[str, str]:
    """{file name: MD5} of a CIFAR archive's members, and of the archive itself, as torchvision checks them."""
    with tarfile.open(archive, "r:gz") as tar:
        md5s = {Path(m.name).name: hashlib.md5(tar.extractfile(m).read()).hexdigest() for m in tar if m.isfile()}
    return {**md5s, Path(archive).name: hashlib.md5(Path(archive).read_bytes()).hexdigest()}


@pytest.fixture
def http_root(tmp_path):
    """A folder served over HTTP on 127.0.0.1; yields (folder, base_url, request_log)."""
    folder = tmp_path / "served"
    folder.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}/", requests
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True, scope="session")
def _keras_home(tmp_path_factory):
    """`invoke data` fills Keras' dataset cache: keep the tests' entries out of the user's ~/.keras."""
    os.environ["KERAS_HOME"] = str(tmp_path_factory.mktemp("keras-home"))


def tiny_spec(source: Path, num_train=600, num_test=200):
    """Make an MNIST-style dataset's files in `source`; returns its registry entry, named 'tiny' (not registered)."""
    from classifier.machinery import datasets as data

    files = make_idx_files(source, num_train=num_train, num_test=num_test)
    return data.Dataset(
        name="tiny",
        title="Tiny patterns",
        base_url="http://127.0.0.1:9/unused/",
        files=tuple(
            data.DataFile(name, sha256_bytes(blob), len(blob), sha256_bytes(gzip.decompress(blob)))
            for name, blob in files.items()
        ),
        class_names=tuple(f"class{i}" for i in range(10)),
        image_shape=(28, 28, 1),
        format="idx",
    )


@pytest.fixture
def tiny_dataset(tmp_path, monkeypatch):
    """A registered MNIST-style dataset 'tiny' whose files the test made; yields (Dataset, source folder)."""
    from classifier import registry
    from classifier.machinery import datasets as data

    source = tmp_path / "tiny-source"
    spec = tiny_spec(source)
    monkeypatch.setitem(data.DATASETS, "tiny", spec)
    monkeypatch.setattr(registry, "DATASETS", (*registry.DATASETS, "tiny"))
    return spec, source


@contextlib.contextmanager
def registered(spec):
    """Register a made-up dataset for a module's fixtures: its files in datasets.DATASETS, its name in registry."""
    from classifier import registry
    from classifier.machinery import datasets as data

    names = registry.DATASETS
    data.DATASETS[spec.name] = spec
    registry.DATASETS = (*names, spec.name)
    try:
        yield spec
    finally:
        del data.DATASETS[spec.name]
        registry.DATASETS = names


@pytest.fixture(scope="session")
def fashion_source():
    """Debian's real Fashion-MNIST files (package dataset-fashion-mnist)."""
    if not FASHION_MNIST_DEBIAN.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail("CI must install dataset-fashion-mnist (see .ci/run)")
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    return FASHION_MNIST_DEBIAN


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 160 MB tmpfs mounted at tmp_path/"tmpfs" for the test (root only, as CI runs); yields its path.

    A read-only place even for root: `remount_read_only(path)`. Skipped where
    no tmpfs can be mounted, failed in CI.
    """
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs here ({mounted.stderr.strip() or mounted.returncode}); run as root"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs as root and must mount a tmpfs, but {reason}", pytrace=False)
        pytest.skip(reason)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def remount_read_only(folder: Path) -> None:
    """Make the small_tmpfs at `folder` read-only: chmod would not stop root."""
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


def notebook_run_of(command: Path, lab_dir: Path, monkeypatch) -> Path:
    """What notebook 02 records for the model a tiny-dataset `--trainer tape` run trained: lab.record_run of its
    model.keras and history, with the notebook's data and runs folders under lab_dir; returns the notebook's run."""
    import keras

    from classifier import lab
    from classifier.config import make_config
    from classifier.machinery.loading import load_dataset

    monkeypatch.setenv("CLASSIFIER_RUNS_DIR", str(lab_dir / "notebook runs"))
    monkeypatch.setenv("CLASSIFIER_DATA_DIR", str(lab_dir / "data"))
    _, (_, _, test), _ = load_dataset(make_config(dataset="tiny"))
    history = json.loads((command / "history.json").read_text(encoding="utf-8"))
    return lab.record_run(keras.models.load_model(command / "model.keras"),
                          {key: history[key] for key in ("loss", "accuracy", "val_loss", "val_accuracy")},
                          (test.images, test.labels), dataset="tiny", trainer="tape", model_name="sequential_add",
                          epochs=1, batch_size=32, seed=42, direct=True)


def run_invoke(*args: str, cwd=ROOT, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run `invoke ARGS` as a person would, from the project folder."""
    environment = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def invoke_cli():
    """The `run_invoke` helper: call it with invoke's arguments, get a CompletedProcess."""
    return run_invoke


@pytest.fixture(scope="session")
def fashion_lab(tmp_path_factory, fashion_source):
    """A data folder holding Fashion-MNIST imported through `invoke data --from`, beside an empty runs folder."""
    root = tmp_path_factory.mktemp("lab")
    result = run_invoke("data", "--dataset", "fashion_mnist", "--from", str(fashion_source), "--data-dir", str(root / "data"))
    assert result.returncode == 0, result.stderr
    assert "4 file(s) verified" in result.stdout
    return root


def train_fashion(lab: Path, *args: str, env=None) -> tuple[Path, subprocess.CompletedProcess]:
    """`invoke train` on the lab's Fashion-MNIST (with `env` added to the environment); returns (run folder, process)."""
    result = run_invoke("train", "--dataset", "fashion_mnist", "--data-dir", str(lab / "data"),
                        "--runs-dir", str(lab / "runs"), *args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_folder_from(result.stdout), result


def run_folder_from(stdout: str) -> Path:
    """The run folder a training printed ('Run folder: PATH')."""
    return Path([line.split(": ", 1)[1] for line in stdout.splitlines() if line.startswith("Run folder: ")][-1])


def require_torch():
    """Import torch for a test module: skip without it, except in CI, which must have it (setup.sh installs it).

    An environment made without PyTorch on purpose (LAB_TORCH=0: `LAB_TORCH=0 ./setup.sh`,
    or the lab image built with `invoke build --no-torch`, WITH_TORCH=0) skips even in CI.
    """
    try:
        import torch
    except ImportError:
        if os.environ.get("CI") == "true" and os.environ.get("LAB_TORCH", "1") != "0":
            pytest.fail("CI must install PyTorch (setup.sh installs requirements/torch-cpu.lock)", pytrace=False)
        pytest.skip("PyTorch is not installed (pip install --require-hashes -r requirements/torch-cpu.lock)",
                    allow_module_level=True)
    return torch


@pytest.fixture
def one_torch_thread():
    """Run torch on one intra-op thread during the test.

    torch's OpenMP threads spin while they wait; on 2 cores shared with other
    work they slowed the torch tests tenfold (500 s against 51 s measured).
    The tests compare runs made with the same setting, so it changes no assertion.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# The image the browser and Dev Containers tests run: built exactly as tests/test_docker.py's
# `invoke build --variant cpu --network host --base-image ...` builds classifier-lab:cpu (same
# Dockerfile, build arguments, user ids and source), so whichever builds first pays and the
# others find every layer in Docker's cache: their build is only a new tag.
LAB_TEST_IMAGE = "classifier-lab:test-cpu"
STANDIN_BASE = "classifier-lab-base:bookworm"
CONTAINER_TEST_USER = "labuser"


def container_user_ids() -> tuple[int, int]:
    """UID and GID of the host user the container tests play (the lab never runs as root).

    As root (CI) it is `labuser`, whom docker/ci-setup.sh adds and tests/test_docker.py
    plays; without that user, 1234. Otherwise the user running pytest.
    """
    if os.getuid() != 0:
        return os.getuid(), os.getgid()
    try:
        entry = pwd.getpwnam(CONTAINER_TEST_USER)
    except KeyError:
        return 1234, 1234
    return entry.pw_uid, entry.pw_gid


def docker_engine_answers() -> bool:
    """True when the docker CLI is installed and an engine answers it."""
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0


def standin_base_image() -> str | None:
    """$LAB_BASE_IMAGE, else the local stand-in base (docker/build-standin-base.sh) when present, else None."""
    if base := os.environ.get("LAB_BASE_IMAGE"):
        return base
    present = subprocess.run(["docker", "image", "inspect", STANDIN_BASE], capture_output=True).returncode == 0
    return STANDIN_BASE if present else None


@pytest.fixture(scope="session")
def lab_test_image():
    """The CPU lab image, TensorFlow and PyTorch, for the browser and Dev Containers tests: $LAB_IMAGE, or
    classifier-lab:test-cpu built here.

    Without a Docker engine: a skip with the reason, a failure in CI. The tag is
    removed at the end of the session (LAB_TEST_KEEP_IMAGE=1 keeps it); its layers
    stay while tests/test_docker.py's classifier-lab:cpu, the same image, exists.
    """
    if image := os.environ.get("LAB_IMAGE"):
        yield image
        return
    if not docker_engine_answers():
        reason = "no Docker engine is reachable (bash docker/ci-setup.sh starts one)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the container tests, but {reason}", pytrace=False)
        pytest.skip(reason)
    from classifier.machinery import docker_engine, locks

    uid, gid = container_user_ids()
    # As `invoke build` does: PyTorch's CPU wheel into the build context, where the build's pip finds it.
    locks.stage_torch_wheels()
    command = docker_engine.build_command("cpu", tag=LAB_TEST_IMAGE, base_image=standin_base_image(), uid=uid,
                                          gid=gid, network="host")
    started = time.perf_counter()
    build = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - started
    assert build.returncode == 0, f"the lab image did not build:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    # The classic builder says "Using cache" under each step it did not run again (ARG before FROM and FROM never do).
    steps = [step for step in re.split(r"^Step \d+/\d+ : ", build.stdout, flags=re.MULTILINE)[1:]
             if not step.startswith(("FROM ", "ARG BASE_IMAGE"))]
    cached = sum("Using cache" in step for step in steps)
    print(f"\n[timing] {LAB_TEST_IMAGE} build {seconds:.0f} s, {cached} of {len(steps)} steps from Docker's cache "
          f"(uid {uid}, gid {gid})")
    yield LAB_TEST_IMAGE
    if os.environ.get("LAB_TEST_KEEP_IMAGE") != "1":
        subprocess.run(["docker", "rmi", LAB_TEST_IMAGE], capture_output=True, timeout=300)


# CI's time budget, tier by tier: .ci/run prints test-output/tiers.txt with its own phases.
# container: the tests that build or start the lab image; arm64: the lab under QEMU
# (tests/test_arm64.py, marker arm64); colab: the notebooks in a Colab-like environment
# (tests/test_hosted.py, marker colab); slow: end-to-end trainings on real data
# (marker slow); windows: Windows' locks, install.py and clone, and the lab as Windows'
# and Korean Windows' Python meet it (tests/test_windows.py, tests/test_windows_like.py); quick: the rest.
_TIER_SECONDS: dict[str, float] = {}
_CONTAINER_FILES = ("test_docker.py", "test_devcontainer.py", "test_browser.py")
_WINDOWS_FILES = ("test_windows.py", "test_windows_like.py")


def _tier(item_path: str, keywords) -> str:
    if item_path.endswith(_CONTAINER_FILES) or "docker" in keywords:
        return "container"
    if "arm64" in keywords:
        return "arm64"
    if "colab" in keywords:
        return "colab"
    if item_path.endswith(_WINDOWS_FILES):
        return "windows"
    return "slow" if "slow" in keywords else "quick"


def pytest_runtest_logreport(report):
    """Add each test's setup, call and teardown time to its tier."""
    tier = _tier(report.fspath, report.keywords)
    _TIER_SECONDS[tier] = _TIER_SECONDS.get(tier, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    """Print the tiers' times and keep them for .ci/run's summary."""
    if not _TIER_SECONDS:
        return
    lines = [f"{tier + ' tier':<26} {seconds:6.0f} s" for tier, seconds in sorted(_TIER_SECONDS.items())]
    terminalreporter.write_sep("-", "time per test tier")
    for line in lines:
        terminalreporter.write_line(line)
    output = ROOT / "test-output"
    output.mkdir(exist_ok=True)
    (output / "tiers.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
