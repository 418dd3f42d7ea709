"""The lab container from the host: build, start, enter, stop, and lock its dependencies.

    invoke build --variant cpu --network host   # -> build(): the image classifier-lab:cpu, TensorFlow and PyTorch
    invoke lab --variant cpu                    # -> lab_up(): starts it, waits until healthy, prints the URL
    invoke shell -c "invoke train --limit 600"  # -> shell(): a command (or bash) in a fresh lab container
    invoke down                                 # -> down()
    invoke lock                                 # -> lock(): regenerates requirements/*.lock

Every docker and compose command runs with its output captured (a build's is
also shown as it goes), and a failure ends in one `ContainerError` line that
names the cause and the fix: the engine not running, no access to its socket,
a port in use, an image not built yet, no NVIDIA runtime, a full disk. Before
it raises, a failed start removes the containers it created.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from classifier.config import UserError
from classifier.machinery import platforms
from classifier.machinery.files import write_text

REPO_ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("gpu", "cpu")
IMAGE_NAME = "classifier-lab"
ENV_FILE = REPO_ROOT / ".env"
COMPOSE_FILES = {"gpu": "docker-compose.yml", "cpu": "docker-compose.cpu.yml"}
# Wheels the build installs that no index it reaches may have (PyTorch's CPU
# build is not on PyPI). In the build context, git-ignored; docker/Dockerfile
# installs from here, or from PyTorch's CPU index when it holds no wheel.
WHEELS_DIR = REPO_ROOT / "docker" / "wheels"
TORCH_CPU_LOCK = REPO_ROOT / "requirements" / "torch-cpu.lock"
# Folders compose mounts into the container. They are in git (with a
# .gitkeep) and created here too, so that Docker never creates them as root.
MOUNTED_FOLDERS = ("data", "runs")
# docker-compose waits this long (seconds) for the engine's answer. Its
# default, 60, is shorter than creating a container takes on slow storage
# (the vfs driver copies the whole 2 GB image for every container).
COMPOSE_HTTP_TIMEOUT = "600"
# The arguments of every lock file; `requirements/lab.lock` is constrained by
# both TensorFlow locks so that it installs over either without a conflict.
_LOCK_PLATFORM = ["--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28"]
_NVIDIA_FIX = ("install the NVIDIA Container Toolkit and run `sudo nvidia-ctk runtime configure --runtime=docker "
               "&& sudo systemctl restart docker`, or use the CPU image: --variant cpu")


class ContainerError(UserError):
    """A container command could not run or failed; the message is one line."""


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ContainerError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return variant


# What docker and docker-compose print, and the one line the user gets instead.
# The first match wins, so the more specific causes come first.
_CAUSES: list[tuple[tuple[str, ...], str]] = [
    (("permission denied while trying to connect to the docker daemon", "permissionerror(13"),
     "permission denied on the Docker socket: add your user to the docker group "
     "(sudo usermod -aG docker $USER), then log out and in again"),
    (("cannot connect to the docker daemon", "is the docker daemon running", "connectionrefusederror",
      "couldn't connect to docker daemon",
      "error while fetching server api version", "filenotfounderror(2, 'no such file or directory')"),
     "the Docker engine is not running: start it (sudo systemctl start docker, or open Docker Desktop) and try again"),
    (("no space left on device",),
     "the disk that holds Docker's images is full (`docker system df` shows what uses it): "
     "free space with `docker system prune` (or `docker builder prune`) and run again"),
    (("could not select device driver", "unknown or invalid runtime name: nvidia", "unknown runtime specified nvidia"),
     f"the Docker engine has no NVIDIA runtime for the GPU image: {_NVIDIA_FIX}"),
    (("temporary failure resolving", "could not resolve host", "temporary failure in name resolution",
      "network is unreachable", "failed to establish a new connection"),
     "the build cannot reach the network: on an engine without a bridge network build with `--network host`"),
    (("read timed out", "unixhttpconnectionpool"),
     "docker-compose gave up waiting for the engine (slow storage such as vfs): "
     "raise COMPOSE_HTTP_TIMEOUT (the tasks use 600 seconds), e.g. COMPOSE_HTTP_TIMEOUT=1200"),
]
# Docker 28 says "failed to bind host port for 127.0.0.1:8888:172.18.0.2:8888/tcp: address already in use".
_PORT_IN_USE = re.compile(r"(?:127\.0\.0\.1|0\.0\.0\.0|\[::\]|::)?:(\d+)(?:: bind)?: address already in use"
                          r"|bind for [\d.:]+:(\d+) failed: port is already allocated"
                          r"|bind host port for (?:127\.0\.0\.1|0\.0\.0\.0|\[::\]|::):(\d+):", re.IGNORECASE)


def explain(output: str, ports: dict[int, str] | None = None) -> str | None:
    """The one-line cause and fix for what docker or docker-compose printed, if it is a known one.

    Args:
        output: the command's captured stdout and stderr.
        ports: host port -> the flag that sets it, to name in a "port in use" answer.

    Returns:
        The line, or None when the output matches no known cause.
    """
    port_match = _PORT_IN_USE.search(output)
    if port_match:
        port = int(next(group for group in port_match.groups() if group))
        flag = (ports or {}).get(port, "--port")
        return (f"port {port} on 127.0.0.1 is already in use by another program: stop it, "
                f"or choose another port with `{flag} {port + 1}`")
    lowered = output.lower()
    for needles, message in _CAUSES:
        if any(needle in lowered for needle in needles):
            return message
    return None


def _last_line(output: str) -> str:
    """The last line of output that says something (not a traceback frame), for an unknown failure."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    meaningful = [line for line in lines if not line.startswith(("File ", "Traceback", "^", "During handling"))]
    return (meaningful or lines or ["no output"])[-1][:300]


def _fail(what: str, output: str, returncode: int, ports: dict[int, str] | None = None) -> ContainerError:
    cause = explain(output, ports)
    return ContainerError(cause or f"{what} failed (exit {returncode}): {_last_line(output)}")


def _environment(image: str | None = None) -> dict[str, str]:
    """The environment for docker and compose: ours, with compose's timeout raised for slow storage.

    Args:
        image: the image compose is to run: LAB_IMAGE is set to it (a digest
            reference) or emptied (the local build), so that a tag given in the
            environment cannot win over the digest written to .env.
    """
    environment = dict(os.environ)
    environment.setdefault("COMPOSE_HTTP_TIMEOUT", COMPOSE_HTTP_TIMEOUT)
    environment.setdefault("DOCKER_CLIENT_TIMEOUT", COMPOSE_HTTP_TIMEOUT)
    if image is not None:
        environment["LAB_IMAGE"] = "" if _is_local_build(image) else image
    return environment


def _capture(command: list[str], what: str, *, timeout: float = 900,
             ports: dict[int, str] | None = None, image: str | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command with its output captured (`env` added to the environment); raise a one-line ContainerError if it fails."""
    try:
        result = subprocess.run(command, cwd=REPO_ROOT, env={**_environment(image), **(env or {})}, text=True,
                                timeout=timeout,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise ContainerError(f"{command[0]} not found: install Docker (docs.docker.com/engine/install)") from None
    except subprocess.TimeoutExpired:
        raise ContainerError(f"{what} did not finish within {timeout:.0f} seconds") from None
    if result.returncode != 0:
        raise _fail(what, result.stdout, result.returncode, ports)
    return result.stdout


def _stream(command: list[str], what: str) -> None:
    """Run a long command (a build) showing its output as it goes; keep the tail to name a failure."""
    tail: collections.deque[str] = collections.deque(maxlen=200)
    try:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=_environment(), text=True, bufsize=1,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise ContainerError(f"{command[0]} not found: install Docker (docs.docker.com/engine/install)") from None
    with process:
        for line in process.stdout:
            sys.stdout.write(line)
            tail.append(line)
        returncode = process.wait()
    if returncode != 0:
        sys.stdout.flush()
        raise _fail(what, "".join(tail), returncode)


def check_engine() -> str:
    """The Docker engine's version; a one-line ContainerError when it cannot be reached.

    Returns:
        The server version, e.g. "20.10.24+dfsg1".
    """
    if shutil.which("docker") is None:
        raise ContainerError("docker not found: install Docker Engine or Docker Desktop (docs.docker.com/engine/install)")
    return _capture(["docker", "version", "--format", "{{.Server.Version}}"], "docker version", timeout=60).strip()


def check_nvidia_runtime() -> None:
    """Raise a one-line ContainerError unless the engine has the NVIDIA runtime the GPU image needs."""
    runtimes = _capture(["docker", "info", "--format", "{{json .Runtimes}}"], "docker info", timeout=60)
    if "nvidia" not in runtimes:
        raise ContainerError(f"the Docker engine has no NVIDIA runtime for the GPU image: {_NVIDIA_FIX}")


def host_ids() -> tuple[int, int]:
    """The UID and GID the container user gets: the host user's, or 1000 for root.

    Returns:
        (uid, gid); root (0) maps to 1000 because the lab never runs as root.
    """
    uid, gid = (os.getuid(), os.getgid()) if hasattr(os, "getuid") else (1000, 1000)
    return (uid or 1000, gid or 1000)


def image_tag(variant: str) -> str:
    """The image `invoke build` makes and compose uses for a variant, e.g. classifier-lab:gpu."""
    return f"{IMAGE_NAME}:{_check_variant(variant)}"


def compose_command() -> list[str]:
    """`docker compose` (v2) when the plugin is there, else `docker-compose` (1.x)."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise ContainerError("neither `docker compose` nor `docker-compose` is installed: "
                         "install the docker-compose-plugin (or docker-compose)")


def build_command(
    variant: str = "gpu",
    *,
    tag: str | None = None,
    base_image: str | None = None,
    uid: int | None = None,
    gid: int | None = None,
    network: str | None = None,
    torch: bool = True,
    cache_from: str | None = None,
) -> list[str]:
    """The `docker build` command line for a variant (see `build`)."""
    default_uid, default_gid = host_ids()
    command = [
        "docker", "build", "-f", "docker/Dockerfile",
        "--build-arg", f"VARIANT={_check_variant(variant)}",
        "--build-arg", f"USER_UID={uid or default_uid}",
        "--build-arg", f"USER_GID={gid or default_gid}",
        "-t", tag or image_tag(variant),
        # A failed step's container is removed too, not only a successful one's.
        "--force-rm",
    ]
    if base_image:
        command += ["--build-arg", f"BASE_IMAGE={base_image}"]
    if cache_from:
        command += ["--cache-from", cache_from]
    if network:
        command += ["--network", network]
    if not torch:
        command += ["--build-arg", "WITH_TORCH=0"]
    return command + ["."]


def _local_wheel_pins(lock: Path) -> list[str]:
    """The entries of a hash-locked file whose version has a local part (`torch==2.13.0+cpu`): on no public index.

    Returns:
        Each entry as requirement lines (the pin and its --hash lines), ready for `pip download -r`.
    """
    entries: list[str] = []
    lines = lock.read_text().splitlines()
    for index, line in enumerate(lines):
        if "==" in line and "+" in line.split("==", 1)[1] and not line.startswith((" ", "#")):
            block = [line]
            for following in lines[index + 1:]:
                if not following.strip().startswith("--hash"):
                    break
                block.append(following)
            entries.append("\n".join(block).rstrip(" \\") + "\n")
    return entries


def _wheel_hashes(entries: list[str]) -> set[str]:
    return set(re.findall(r"--hash=sha256:([0-9a-f]{64})", "".join(entries)))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_wheels(entries: list[str], folder: Path) -> None:
    """`pip download` the entries (with their hashes) into a staging folder, then move the wheels into folder."""
    staging = folder / f".staging-{os.getpid()}"
    staging.mkdir(exist_ok=True)
    try:
        (staging / "requirements.txt").write_text("".join(entries))
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
                                 "-r", str(staging / "requirements.txt"), "-d", str(staging)],
                                capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)
        for wheel in staging.glob("*.whl") if result.returncode == 0 else []:
            wheel.chmod(0o644)  # as a checkout's files are: the build's cache key includes the mode
            os.replace(wheel, folder / wheel.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def stage_torch_wheels(lock: Path | None = TORCH_CPU_LOCK, folder: Path = WHEELS_DIR) -> list[Path]:
    """Put the locked PyTorch CPU wheel into the build context, from where this machine's pip finds it.

    PyTorch's CPU wheel is on PyTorch's own index, not PyPI. Where pip finds it
    in a local wheel folder (find-links in its configuration) or an index it uses,
    `pip download` copies it into docker/wheels/ and the build installs it from
    there; elsewhere the folder stays empty and the build asks PyTorch's index.
    Wheels already there with a locked hash are kept, others removed, so the
    build context holds exactly the lock's wheel. The download goes to a
    staging folder and is moved in only when complete.

    Args:
        lock: the hash-locked file whose local-version pins (`+cpu`) to stage; None
            (or a lock without such pins, as torch-gpu.lock) empties the folder, so
            that an image without PyTorch's CPU build does not carry its wheel.
        folder: the wheel folder in the build context.

    Returns:
        The wheels in the folder afterwards (empty when pip could not find them).
    """
    entries = _local_wheel_pins(lock) if lock else []
    wanted = _wheel_hashes(entries)
    folder.mkdir(parents=True, exist_ok=True)
    kept = set()
    for path in folder.glob("*.whl"):
        digest = _sha256(path)
        if digest in wanted:
            kept.add(digest)
        else:  # an earlier lock's wheel: it would only make the build context larger
            path.unlink()
    if wanted - kept:
        _download_wheels(entries, folder)
    wheels = sorted(folder.glob("*.whl"))
    if entries and not wheels:
        print(f"note: pip on this machine has no copy of {entries[0].split(' ', 1)[0]}; "
              "the build downloads it from PyTorch's CPU index", flush=True)
    return wheels


def build(
    variant: str = "gpu",
    *,
    tag: str | None = None,
    base_image: str | None = None,
    uid: int | None = None,
    gid: int | None = None,
    network: str | None = None,
    torch: bool = True,
    cache_from: str | None = None,
) -> str:
    """Build the lab image, showing docker's output; a failure ends in one line naming its cause.

    Args:
        variant: "gpu" (tensorflow[and-cuda]) or "cpu" (tensorflow-cpu).
        tag: image name; default classifier-lab:<variant>, the one compose and `invoke lab` use.
        base_image: overrides the Dockerfile's pinned BASE_IMAGE (CI: the local stand-in).
        uid, gid: the container user's ids; default the host user's (1000 for root).
        network: build network, e.g. "host" where the engine has no bridge network.
        torch: PyTorch beside TensorFlow (the default): in the CPU image, its CPU
            build (from docker/wheels/, which `stage_torch_wheels` fills, or
            PyTorch's index); in the GPU image, its CUDA build in an environment
            of its own (docker/Dockerfile's WITH_TORCH says why).
        cache_from: an image whose layers the build may reuse, e.g. the class's
            published image pulled beforehand: only the user and source layers are then built.

    Returns:
        The image tag that was built.
    """
    command = build_command(variant, tag=tag, base_image=base_image, uid=uid, gid=gid,
                            network=network, torch=torch, cache_from=cache_from)
    if variant == "gpu" and platform.machine() in ("aarch64", "arm64"):
        raise ContainerError(f"the GPU image is linux/amd64 only and this machine is {platform.machine()}: "
                             "build the CPU image with --variant cpu (docs/arm64.md: Jetson)")
    check_engine()
    stage_torch_wheels(TORCH_CPU_LOCK if torch and variant == "cpu" else None)
    built = command[command.index("-t") + 1]
    started = time.monotonic()
    _stream(command, "docker build")
    print(f"built {built} in {time.monotonic() - started:.0f} s; start it with: invoke lab --variant {variant}")
    return built


def read_env_file(path: Path) -> dict[str, str]:
    """The KEY=value lines of an env file (docker/.env, compose's --env-file); {} when it does not exist."""
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not line.lstrip().startswith("#"):
                values[key.strip()] = value.strip()
    return values


def write_env_file(variant: str = "gpu", *, port: int | None = None, tensorboard_port: int | None = None,
                   image: str | None = None, path: Path = ENV_FILE) -> dict[str, str]:
    """Write the settings compose reads from .env, keeping a token and settings already there.

    The token is generated once (secrets.token_urlsafe) and never empty; the
    file is git-ignored and readable by its owner only. COMPOSE_FILE makes a
    plain `docker compose ...` use the variant's compose file.

    Args:
        variant: "gpu" or "cpu".
        port: the host port of JupyterLab (127.0.0.1 only); None keeps the one in the file (8888).
        tensorboard_port: the host port of TensorBoard; None keeps the one in the file (6006).
        image: LAB_IMAGE, the image compose runs; "" removes it (the locally built
            classifier-lab:VARIANT is used), None keeps the one in the file.
        path: the .env file.

    Returns:
        All settings in the file after writing.
    """
    values = read_env_file(path)
    uid, gid = host_ids()
    if not values.get("JUPYTER_TOKEN"):
        values["JUPYTER_TOKEN"] = secrets.token_urlsafe(32)
    values.update(
        COMPOSE_FILE=COMPOSE_FILES[_check_variant(variant)],
        LAB_VARIANT=variant,
        LAB_UID=str(uid),
        LAB_GID=str(gid),
        LAB_PORT=str(port or values.get("LAB_PORT") or 8888),
        TENSORBOARD_PORT=str(tensorboard_port or values.get("TENSORBOARD_PORT") or 6006),
    )
    if image:
        values["LAB_IMAGE"] = image
    elif image == "":
        values.pop("LAB_IMAGE", None)
    # 0600 from the moment the temporary file exists (mkstemp), renamed over .env only when complete.
    write_text(path, "".join(f"{key}={value}\n" for key, value in values.items()), mode=0o600)
    return values


def lab_url(values: dict[str, str]) -> str:
    """The JupyterLab URL with the token, from the .env settings."""
    return f"http://127.0.0.1:{values.get('LAB_PORT', '8888')}/lab?token={values['JUPYTER_TOKEN']}"


def _image_present(reference: str) -> bool:
    result = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", reference],
                            capture_output=True, text=True, timeout=60, env=_environment())
    return result.returncode == 0


def _image_variant(reference: str) -> str | None:
    """The LAB_VARIANT an image was built with (its Dockerfile sets it), or None."""
    environment = json.loads(_capture(["docker", "image", "inspect", "--format", "{{json .Config.Env}}", reference],
                                      "docker image inspect", timeout=60) or "null") or []
    return next((item.split("=", 1)[1] for item in environment if item.startswith("LAB_VARIANT=")), None)


def _is_local_build(reference: str) -> bool:
    return reference.split("@")[0].split(":")[0] == IMAGE_NAME


def resolve_image(variant: str, requested: str | None) -> str:
    """The image the lab runs: the local build, or a published one pulled and pinned by its digest.

    Args:
        variant: "gpu" or "cpu".
        requested: LAB_IMAGE, e.g. ghcr.io/school/classifier-lab:cpu-v1.0 or
            ...@sha256:...; empty or None means the image `invoke build` made.

    Returns:
        The reference to run: classifier-lab:VARIANT, or REPOSITORY@sha256:DIGEST.
    """
    reference = requested or image_tag(variant)
    if not _image_present(reference):
        if _is_local_build(reference):
            raise ContainerError(f"image {reference} is not built yet: run `invoke build --variant {variant}` "
                                 "first (or set LAB_IMAGE to a published image)")
        print(f"pulling {reference} ...", flush=True)
        _capture(["docker", "pull", reference], f"docker pull {reference}", timeout=3600)
    built_as = _image_variant(reference)
    if built_as and built_as != variant:
        raise ContainerError(f"LAB_IMAGE {reference} is the {built_as} image, not {variant}: "
                             f"use --variant {built_as}, or set LAB_IMAGE to the {variant} image")
    if _is_local_build(reference) or "@sha256:" in reference:
        return reference
    # A tag can move; the digest names these exact bytes, in .env and in every run's manifest.
    digests = json.loads(_capture(["docker", "image", "inspect", "--format", "{{json .RepoDigests}}", reference],
                                  "docker image inspect", timeout=60) or "[]") or []
    repository = reference.rsplit(":", 1)[0] if ":" in reference.rsplit("/", 1)[-1] else reference
    pinned = [digest for digest in digests if digest.split("@")[0] == repository]
    return (pinned or digests or [reference])[0]


def _ports_free(ports: dict[int, str]) -> None:
    for port, flag in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                raise ContainerError(f"port {port} on 127.0.0.1 is already in use by another program: stop it, "
                                     f"or choose another port with `{flag} {port + 1}`") from None


def _compose(variant: str) -> list[str]:
    return compose_command() + ["-f", COMPOSE_FILES[_check_variant(variant)]]


def _service_container(variant: str, service: str) -> str:
    return _capture(_compose(variant) + ["ps", "-q", service], "docker-compose ps", timeout=120).strip()


def _wait_healthy(container: str, timeout: float) -> str:
    """Poll the container's health until healthy or unhealthy (or timeout); return the last status."""
    deadline = time.monotonic() + timeout
    status = "starting"
    while time.monotonic() < deadline:
        state = _capture(["docker", "inspect", "--format", "{{.State.Status}} {{.State.Health.Status}}", container],
                         "docker inspect", timeout=60).split()
        status = state[1] if state[0] == "running" and len(state) > 1 else state[0]
        if status in ("healthy", "unhealthy", "exited", "dead"):
            return status
        time.sleep(2)
    return status


def _prepare(variant: str, image: str | None) -> str:
    """The checks every start makes: engine, image (pulled if published), NVIDIA runtime for the GPU image."""
    check_engine()
    # First: without the runtime the GPU image is of no use, built or not.
    if variant == "gpu":
        check_nvidia_runtime()
    reference = resolve_image(variant, image)
    for folder in MOUNTED_FOLDERS:
        (REPO_ROOT / folder).mkdir(exist_ok=True)
    return reference


def _requested_image(values: dict[str, str]) -> str | None:
    # LAB_IMAGE in the environment wins (an empty one means the local build); else the one in .env.
    return os.environ["LAB_IMAGE"] if "LAB_IMAGE" in os.environ else values.get("LAB_IMAGE")


def lab_up(variant: str = "gpu", *, port: int = 8888, tensorboard_port: int = 6006, wait: float = 300) -> str:
    """Start the lab (JupyterLab and TensorBoard) in the background, wait until healthy, print its URL.

    Runs the image `invoke build` made (classifier-lab:VARIANT) or the one
    LAB_IMAGE names, pulled and pinned by digest; it never builds. A failure
    removes the containers it created and ends in one line.

    Args:
        variant: "gpu" or "cpu" (the compose file to use).
        port: the host port of JupyterLab.
        tensorboard_port: the host port of TensorBoard.
        wait: seconds to wait for JupyterLab to answer.

    Returns:
        The URL with the token.
    """
    _check_variant(variant)
    ports = {port: "--port", tensorboard_port: "--tensorboard-port"}
    for number, flag in ports.items():
        if not 1 <= number <= 65535:
            raise ContainerError(f"{flag} must be between 1 and 65535, got {number}")
    check_engine()
    settings = read_env_file(ENV_FILE)
    # Before the image is resolved (a pull takes minutes), so that a taken port is named at once. A lab that
    # is already up holds its own ports (`up -d` leaves it running); any other port it is given must be free.
    held = {settings.get("LAB_PORT"), settings.get("TENSORBOARD_PORT")} if _service_container(variant, "lab") else set()
    _ports_free({number: flag for number, flag in ports.items() if str(number) not in held})
    reference = _prepare(variant, _requested_image(settings))
    compose = _compose(variant)
    values = write_env_file(variant, port=port, tensorboard_port=tensorboard_port,
                            image="" if _is_local_build(reference) else reference)
    print(f"starting the lab from {reference} ...", flush=True)
    try:
        _capture(compose + ["up", "-d", "--no-build"], "docker-compose up", ports=ports, image=reference)
        container = _service_container(variant, "lab")
        status = _wait_healthy(container, wait)
        if status != "healthy":
            logs = _capture(["docker", "logs", "--tail", "20", container], "docker logs", timeout=60)
            raise ContainerError(f"JupyterLab did not become healthy within {wait:.0f} s (status {status}): "
                                 f"{_last_line(logs)}")
    except ContainerError:
        subprocess.run(compose + ["down", "--timeout", "5"], cwd=REPO_ROOT, env=_environment(reference),
                       capture_output=True, timeout=600)
        raise
    url = lab_url(values)
    print(f"JupyterLab: {url}\nTensorBoard: http://127.0.0.1:{values['TENSORBOARD_PORT']}/")
    return url


def shell(variant: str | None = None, command: str = "") -> int:
    """Run bash, or one command, in a new lab container (repository mounted, removed on exit).

    Args:
        variant: "gpu" or "cpu"; default the one `invoke lab` last used (.env), else gpu.
        command: a bash command line to run instead of an interactive shell.

    Returns:
        The exit status of the shell or command.
    """
    values = read_env_file(ENV_FILE)
    variant = _check_variant(variant or values.get("LAB_VARIANT", "gpu"))
    reference = _prepare(variant, _requested_image(values))
    # The lab's own variant stays in .env (`invoke down` stops that one); the ids and image are refreshed.
    write_env_file(values.get("LAB_VARIANT") or variant, image="" if _is_local_build(reference) else reference)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    arguments = ["run", "--rm"] + ([] if interactive else ["-T"]) + ["lab", "bash"]
    arguments += ["-c", command] if command else []
    return subprocess.run(_compose(variant) + arguments, cwd=REPO_ROOT, env=_environment(reference)).returncode


def down(variant: str | None = None) -> None:
    """Stop and remove the lab's containers; data/ and runs/ stay on the host."""
    variant = _check_variant(variant or read_env_file(ENV_FILE).get("LAB_VARIANT", "gpu"))
    check_engine()
    _capture(_compose(variant) + ["down", "--timeout", "10"], "docker-compose down")
    print("the lab is stopped; data/ and runs/ stay on your disk")


def lock_commands() -> list[list[str]]:
    """The uv commands that write every requirements/*.lock, in order.

    They are the commands recorded in each lock file's header. The torch locks
    are constrained by TensorFlow's and the lab's, so that installing one after
    the other changes no version. The arm64 locks (classifier/machinery/platforms.py)
    are constrained by the x86-64 ones too, so that every package the platforms
    share has the same version everywhere; uv runs them with
    platforms.LOCK_ENVIRONMENT (macOS 14, which torch's macOS wheels need).
    """
    def compile_(*extra: str, output: str, target: str = _LOCK_PLATFORM[-1]) -> list[str]:
        return ["uv", "pip", "compile", "pyproject.toml", *extra, "--generate-hashes",
                *_LOCK_PLATFORM[:-1], target, "-o", output]

    commands = [
        compile_("--extra", "cpu", output="requirements/cpu.lock"),
        # tf-keras alone, for the course's own scripts (requirements/course.in says why), installed with
        # --no-deps; its one py3-none-any wheel serves every platform.
        ["uv", "pip", "compile", "requirements/course.in", "--no-deps", "--generate-hashes", *_LOCK_PLATFORM,
         "-o", platforms.COURSE_LOCK],
        compile_("--extra", "gpu", output="requirements/gpu.lock"),
        compile_("--extra", "lab", "-c", "requirements/cpu.lock", "-c", "requirements/gpu.lock",
                 output="requirements/lab.lock"),
        compile_("--extra", "torch-cpu", "-c", "requirements/cpu.lock", "-c", "requirements/lab.lock",
                 output="requirements/torch-cpu.lock"),
        compile_("--extra", "torch-gpu", "-c", "requirements/gpu.lock", "-c", "requirements/lab.lock",
                 output="requirements/torch-gpu.lock"),
    ]
    for arm in platforms.PLATFORMS[1:]:
        commands += [
            compile_("--extra", "cpu-arm64", "-c", "requirements/cpu.lock", output=arm.cpu_lock, target=arm.uv_platform),
            compile_("--extra", "lab", "-c", arm.cpu_lock, "-c", "requirements/lab.lock",
                     output=arm.lab_lock, target=arm.uv_platform),
            compile_("--extra", f"torch-{arm.name}", "-c", arm.cpu_lock, "-c", arm.lab_lock,
                     output=arm.torch_lock, target=arm.uv_platform),
        ]
    return commands


def _torch_cpu_source() -> list[str]:
    """Where uv finds PyTorch's CPU wheel (not on PyPI): $LAB_TORCH_WHEELS, a folder, else PyTorch's CPU index."""
    if folder := os.environ.get("LAB_TORCH_WHEELS"):
        return ["--find-links", folder]
    return ["--extra-index-url", "https://download.pytorch.org/whl/cpu", "--index-strategy", "unsafe-best-match"]


def lock(upgrade: bool = False) -> list[Path]:
    """Regenerate the hash-locked requirement files from pyproject.toml.

    Args:
        upgrade: let uv pick newer versions of unpinned transitive packages.

    Returns:
        The lock files written.
    """
    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if not Path(uv).exists():
        raise ContainerError("uv not found: pip install uv")
    written = []
    for command in lock_commands():
        source = _torch_cpu_source() if "torch-cpu" in command else []
        _capture([uv, *command[1:]] + source + (["--upgrade"] if upgrade else []), "uv pip compile", timeout=1800,
                 env=platforms.LOCK_ENVIRONMENT)
        written.append(REPO_ROOT / command[-1])
    return written
