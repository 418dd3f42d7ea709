"""Dev Containers: `.devcontainer/` read by the real Dev Containers CLI, then `up` and `exec` against Docker.

The CLI is `@devcontainers/cli` from npm: $DEVCONTAINER_CLI, else `devcontainer`
on PATH, else the copy .ci/run installs into /opt/devcontainers-cli. Without
it or a Docker engine the tests skip with the reason (in CI they fail).
`up` runs the lab image conftest.py's `lab_test_image` builds with
tests/test_docker.py's build arguments (a tag from Docker's cache when that
image exists); the CLI's own compose build then adds only its metadata label.
Opt out with `-m "not docker"`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from conftest import container_user_ids, docker_engine_answers, standin_base_image

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"gpu": ROOT / ".devcontainer" / "devcontainer.json", "cpu": ROOT / ".devcontainer" / "cpu" / "devcontainer.json"}
# The CLI's own build: the lab image plus its devcontainer.metadata label.
IMAGE = "classifier-lab:devcontainer-test"
IN_CI = os.environ.get("CI") == "true"
# The lab never runs as root: as root (CI) the test plays labuser, as test_docker.py does.
TEST_UID, TEST_GID = container_user_ids()
os.environ.setdefault("COMPOSE_HTTP_TIMEOUT", "600")
os.environ.setdefault("DOCKER_CLIENT_TIMEOUT", "600")


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"CI must run the Dev Containers tests, but {reason}")
    pytest.skip(reason)


def _jsonc(path: Path) -> dict:
    """devcontainer.json allows // comments; none of ours sits inside a string."""
    return json.loads(re.sub(r"^\s*//.*$", "", path.read_text(), flags=re.MULTILINE))


@pytest.fixture(scope="module")
def cli() -> str:
    """The Dev Containers CLI, or a skip (a failure in CI) saying how to get it."""
    for candidate in (os.environ.get("DEVCONTAINER_CLI"), shutil.which("devcontainer"),
                      "/opt/devcontainers-cli/node_modules/.bin/devcontainer"):
        if candidate and Path(candidate).exists():
            return candidate
    _unavailable("the Dev Containers CLI is missing (npm install --prefix /opt/devcontainers-cli @devcontainers/cli)")


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_configuration_uses_the_labs_compose_service_user_and_mounts(variant):
    config = _jsonc(CONFIGS[variant])
    compose_file = (CONFIGS[variant].parent / config["dockerComposeFile"][0]).resolve()
    assert compose_file.name == {"gpu": "docker-compose.yml", "cpu": "docker-compose.cpu.yml"}[variant]
    assert compose_file.is_file()
    assert config["service"] == "lab" and set(config["runServices"]) == {"lab", "tensorboard"}
    # The workspace is where compose mounts the repository (data/ and runs/ inside it).
    services = (ROOT / "docker" / "compose.services.yml").read_text()
    assert "- ..:/workspace" in services and "/workspace/data" in services
    assert config["workspaceFolder"] == "/workspace"
    # The image's user (built with the host's UID/GID) is the remote user; no second UID rewrite.
    assert re.search(r"ARG USER_NAME=(\w+)", (ROOT / "docker" / "Dockerfile").read_text()).group(1) == config["remoteUser"]
    assert config["updateRemoteUserUID"] is False
    extensions = config["customizations"]["vscode"]["extensions"]
    assert {"ms-python.python", "ms-toolsai.jupyter"} <= set(extensions)
    assert config["initializeCommand"] == "python3 .devcontainer/init_env.py"


def test_init_env_adds_only_what_is_missing(tmp_path):
    """initializeCommand on the host: token and UID/GID added, a user's own settings kept."""
    copy = tmp_path / "repo"
    (copy / ".devcontainer").mkdir(parents=True)
    shutil.copy(ROOT / ".devcontainer" / "init_env.py", copy / ".devcontainer")
    shutil.copytree(ROOT / "classifier", copy / "classifier", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / ".env").write_text("LAB_PORT=9999\nLAB_UID=4321\n")
    result = subprocess.run(["python3", ".devcontainer/init_env.py"], cwd=copy, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    values = dict(line.split("=", 1) for line in (copy / ".env").read_text().splitlines())
    assert values["LAB_PORT"] == "9999" and values["LAB_UID"] == "4321"
    assert len(values["JUPYTER_TOKEN"]) >= 32 and values["LAB_GID"]
    assert (copy / ".env").stat().st_mode & 0o777 == 0o600
    assert (copy / "data").is_dir() and (copy / "runs").is_dir()
    token = values["JUPYTER_TOKEN"]
    subprocess.run(["python3", ".devcontainer/init_env.py"], cwd=copy, check=True, capture_output=True, timeout=60)
    assert f"JUPYTER_TOKEN={token}\n" in (copy / ".env").read_text()


def _docker_engine_problem() -> str | None:
    """Why no Docker engine answers this machine's `docker` command (None when one does)."""
    if shutil.which("docker") is None:
        return "the docker command is missing"
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                          timeout=60, check=False)
    if info.returncode == 0:
        return None
    return f"no Docker engine answers ({(info.stderr.strip().splitlines() or ['docker info failed'])[-1]})"


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_the_cli_reads_the_configuration(cli, variant):
    result = subprocess.run([cli, "read-configuration", "--workspace-folder", str(ROOT), "--config", str(CONFIGS[variant])],
                            capture_output=True, text=True, timeout=120)
    # read-configuration first looks for the workspace's running dev container with
    # `docker ps -q -a --filter label=devcontainer.local_folder=...` and exits 1
    # when that fails: without an engine it cannot read a configuration at all.
    # The engine is asked only after a failure, so a real error with an engine still fails here.
    if result.returncode != 0 and (problem := _docker_engine_problem()):
        _unavailable(f"{problem}, and devcontainer read-configuration needs one (it runs `docker ps`)")
    assert result.returncode == 0, result.stderr[-2000:]
    read = json.loads(result.stdout)["configuration"]
    assert read["service"] == "lab" and read["remoteUser"] == "lab"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.docker
def test_devcontainer_up_then_exec_runs_the_lab_as_the_host_user(cli, tmp_path, request):
    """`devcontainer up` on the CPU configuration, then `devcontainer exec ... invoke doctor` as the host user.

    doctor is the smoke test: the locked packages installed, a Conv2D pass in TensorFlow and in PyTorch,
    graphviz, the workspace's folders. The lab image's own tests run in tests/test_docker.py already.
    """
    if not docker_engine_answers():
        _unavailable("no Docker engine is reachable (bash docker/ci-setup.sh starts one)")
    # The lab image first, as `invoke build` makes it (this sandbox's Docker has no bridge network,
    # so only a build on the host network reaches Debian and PyPI): tests/test_docker.py's image.
    # The CLI's own `compose build` of the copy below then finds every layer in the cache.
    request.getfixturevalue("lab_test_image")
    # A copy of the repository with its own .env, so a lab the user runs is left alone.
    workspace = tmp_path / "lab"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    # PyTorch's CPU wheel, which lab_test_image staged as `invoke build` does: git ignores it, and
    # without it the copy's build context differs and its pip step would ask PyTorch's index.
    files += [str(path.relative_to(ROOT)) for path in (ROOT / "docker" / "wheels").glob("*.whl")]
    for name in files:
        if (ROOT / name).is_file():
            (workspace / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, workspace / name)
    base = standin_base_image()
    settings = {"LAB_IMAGE": IMAGE, "LAB_UID": TEST_UID, "LAB_GID": TEST_GID, "LAB_PORT": _free_port(),
                "TENSORBOARD_PORT": _free_port(), "JUPYTER_TOKEN": uuid.uuid4().hex, "LAB_BUILD_NETWORK": "host",
                **({"LAB_BASE_IMAGE": base} if base else {})}
    (workspace / ".env").write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    if os.getuid() == 0:
        for path in [workspace, *workspace.rglob("*")]:
            os.chown(path, TEST_UID, TEST_GID)
    from classifier.machinery import docker_engine

    # docker-compose 1.x builds through the docker CLI, not its own client: the CLI packs the
    # context as `docker build` does (owner 0:0), so the source layer's cache key matches.
    environment = {**os.environ, "COMPOSE_DOCKER_CLI_BUILD": "1", "DOCKER_BUILDKIT": "0"}
    config = workspace / ".devcontainer" / "cpu" / "devcontainer.json"
    where = ["--workspace-folder", str(workspace), "--config", str(config)]
    project = None
    try:
        started = time.perf_counter()
        up = subprocess.run([cli, "up", *where], capture_output=True, text=True, timeout=2400, env=environment)
        print(f"\n[timing] devcontainer up {time.perf_counter() - started:.0f} s")
        print("[devcontainer up] " + "\n".join(up.stdout.strip().splitlines()[-3:]))
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        outcome = json.loads(up.stdout.strip().splitlines()[-1])
        assert outcome["outcome"] == "success" and outcome["remoteUser"] == "lab"
        assert outcome["remoteWorkspaceFolder"] == "/workspace"
        labels = json.loads(subprocess.run(["docker", "inspect", "--format", "{{json .Config.Labels}}", outcome["containerId"]],
                                           capture_output=True, text=True, check=True).stdout)
        project = labels["com.docker.compose.project"]

        ids = subprocess.run([cli, "exec", *where, "id", "-u"], capture_output=True, text=True, timeout=300)
        assert ids.stdout.strip().splitlines()[-1] == str(TEST_UID), ids.stdout + ids.stderr
        doctor = subprocess.run([cli, "exec", *where, "invoke", "doctor"], capture_output=True, text=True, timeout=600)
        print("[devcontainer exec invoke doctor] " + "\n".join(doctor.stdout.strip().splitlines()[-2:]))
        assert doctor.returncode == 0, doctor.stdout[-3000:] + doctor.stderr[-3000:]
        assert re.search(rf"^INFO +container +inside the lab container {re.escape(IMAGE)}$", doctor.stdout, re.M)
        assert re.search(r"^OK +conv2d ", doctor.stdout, re.M) and re.search(r"^OK +torch conv2d ", doctor.stdout, re.M)
        assert doctor.stdout.strip().splitlines()[-1] == "no problems found"
        # A file the container writes to the mounted workspace belongs to the host user.
        subprocess.run([cli, "exec", *where, "touch", "/workspace/runs/written-in-devcontainer"],
                       capture_output=True, text=True, timeout=300, check=True)
        written = workspace / "runs" / "written-in-devcontainer"
        assert (written.stat().st_uid, written.stat().st_gid) == (TEST_UID, TEST_GID)
    finally:
        if project:
            subprocess.run([*docker_engine.compose_command(), "-f", str(workspace / "docker-compose.cpu.yml"), "-p", project,
                            "down", "--timeout", "5"], cwd=workspace, capture_output=True, timeout=300)
        subprocess.run(["docker", "rmi", IMAGE], capture_output=True, timeout=300)
