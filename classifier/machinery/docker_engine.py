"""The Docker engine and compose as the lab container needs them, from the host.

    docker_engine.check_engine()                        # the engine's version, or one line saying why not
    docker_engine.build_command("cpu", network="host")  # the `docker build` command line `invoke build` runs
    docker_engine.prepare("cpu", None)                  # engine, image (pulled and pinned if published), runtime

Every docker and compose command runs with its output captured (`capture`; a
build's is also shown as it goes, `stream`), and a failure ends in one
`ContainerError` line that names the cause and the fix (`explain`): the engine
not running, no access to its socket, a port in use, an image not built yet,
no NVIDIA runtime, a full disk. The lab's `.env`, the settings compose reads,
is read as compose reads it (quotes, `export`, comments; standard library only)
and written by `write_env_file`. classifier/commands/container.py is the
commands around it.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from classifier.config import PROJECT_ROOT, UserError
from classifier.machinery.files import write_text

REPO_ROOT = PROJECT_ROOT
VARIANTS = ("gpu", "cpu")
IMAGE_NAME = "classifier-lab"
ENV_FILE = REPO_ROOT / ".env"
COMPOSE_FILES = {"gpu": "docker-compose.yml", "cpu": "docker-compose.cpu.yml"}
# Folders compose mounts into the container. They are in git (with a
# .gitkeep) and created here too, so that Docker never creates them as root.
MOUNTED_FOLDERS = ("data", "runs")
# docker-compose waits this long (seconds) for the engine's answer. Its
# default, 60, is shorter than creating a container takes on slow storage
# (the vfs driver copies the whole image, 3.82 GB for the CPU one, for every container).
COMPOSE_HTTP_TIMEOUT = "600"
_NVIDIA_FIX = ("install the NVIDIA Container Toolkit and run `sudo nvidia-ctk runtime configure --runtime=docker "
               "&& sudo systemctl restart docker`, or use the CPU image: --variant cpu")


class ContainerError(UserError):
    """A container command could not run or failed; the message is one line."""


def check_variant(variant: str) -> str:
    """`variant` when it is one of VARIANTS; else a one-line ContainerError naming them."""
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


def last_line(output: str) -> str:
    """The last line of output that says something (not a traceback frame), for an unknown failure."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    meaningful = [line for line in lines if not line.startswith(("File ", "Traceback", "^", "During handling"))]
    return (meaningful or lines or ["no output"])[-1][:300]


def _fail(what: str, output: str, returncode: int, ports: dict[int, str] | None = None) -> ContainerError:
    cause = explain(output, ports)
    return ContainerError(cause or f"{what} failed (exit {returncode}): {last_line(output)}")


def docker_environment(image: str | None = None) -> dict[str, str]:
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
        environment["LAB_IMAGE"] = "" if is_local_build(image) else image
    return environment


def capture(command: list[str], what: str, *, timeout: float = 900,
            ports: dict[int, str] | None = None, image: str | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command with its output captured (`env` added to the environment); raise a one-line ContainerError if it fails."""
    try:
        result = subprocess.run(command, cwd=REPO_ROOT, env={**docker_environment(image), **(env or {})}, text=True, encoding="utf-8", errors="replace",
                                timeout=timeout,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise ContainerError(f"{command[0]} not found: install Docker (docs.docker.com/engine/install)") from None
    except subprocess.TimeoutExpired:
        raise ContainerError(f"{what} did not finish within {timeout:.0f} seconds") from None
    if result.returncode != 0:
        raise _fail(what, result.stdout, result.returncode, ports)
    return result.stdout


def stream(command: list[str], what: str) -> None:
    """Run a long command (a build) showing its output as it goes; keep the tail to name a failure."""
    tail: collections.deque[str] = collections.deque(maxlen=200)
    try:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=docker_environment(), text=True, encoding="utf-8", errors="replace", bufsize=1,
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
    return capture(["docker", "version", "--format", "{{.Server.Version}}"], "docker version", timeout=60).strip()


def engine_info() -> dict:
    """What the engine says of itself: `docker info --format '{{json .}}'`, as a dict."""
    return json.loads(capture(["docker", "info", "--format", "{{json .}}"], "docker info", timeout=60) or "{}")


def gpu_route(info: dict) -> str | None:
    """How the engine that `docker info` describes gives a container an NVIDIA GPU, judged from that output.

    Args:
        info: engine_info()'s dict (tests/data/docker-info-*.json are recorded ones).

    Returns:
        "runtime": the NVIDIA Container Toolkit registered its runtime (Docker Engine on Linux);
        "probe": Docker Desktop with the WSL2 backend, whose own GPU support serves `--gpus all` and
        compose's device reservations with no runtime named nvidia; whether this laptop has a GPU for
        it only a test container tells (probe_gpus);
        None: no way to a GPU (an engine without the toolkit, Docker Desktop on macOS or Hyper-V).
    """
    if "nvidia" in (info.get("Runtimes") or {}):
        return "runtime"
    if _is_docker_desktop(info) and "microsoft-standard-wsl2" in str(info.get("KernelVersion", "")).lower():
        return "probe"
    return None


def _is_docker_desktop(info: dict) -> bool:
    return info.get("OperatingSystem") == "Docker Desktop"


def check_gpu_support() -> str:
    """gpu_route() of this engine; a one-line ContainerError when it has no way to a GPU."""
    info = engine_info()
    route = gpu_route(info)
    if route is None and _is_docker_desktop(info):
        raise ContainerError(f"Docker Desktop gives containers a GPU only with its WSL2 backend on Windows "
                             f"(kernel here: {info.get('KernelVersion', 'unknown')}): turn on \"Use the WSL 2 based "
                             "engine\" in its settings, or use the CPU image: --variant cpu")
    if route is None:
        raise ContainerError(f"the Docker engine has no NVIDIA runtime for the GPU image: {_NVIDIA_FIX}")
    return route


def probe_gpus(image: str) -> None:
    """Start `image` with `--gpus all` and stop it at once; a one-line ContainerError when the engine cannot.

    The decisive test where `docker info` cannot tell (Docker Desktop's WSL2 backend).
    """
    command = ["docker", "run", "--rm", "--gpus", "all", "--entrypoint", "true", image]
    result = subprocess.run(command, cwd=REPO_ROOT, env=docker_environment(), text=True, encoding="utf-8", errors="replace", timeout=300,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise ContainerError(f"Docker Desktop could not give a container the GPU (`docker run --gpus all` said: "
                             f"{last_line(result.stdout)}): install NVIDIA's Windows driver, update WSL "
                             "(`wsl --update`) and Docker Desktop, or use the CPU image: --variant cpu")


# What the container user gets where the host has no user ids (Windows); said once, when first used.
WINDOWS_IDS = (1000, 1000)


def host_ids() -> tuple[int, int]:
    """The UID and GID the container user gets: the host user's, or 1000 for root and on Windows.

    Returns:
        (uid, gid); root (0) maps to 1000 because the lab never runs as root.
    """
    if not hasattr(os, "getuid"):
        _say_windows_ids()
        return WINDOWS_IDS
    return (os.getuid() or 1000, os.getgid() or 1000)


@functools.cache
def _say_windows_ids() -> None:
    print(f"note: Windows has no user ids; the container user is {WINDOWS_IDS[0]}:{WINDOWS_IDS[1]}, and Docker "
          "Desktop's file sharing lets it write the mounted data/ and runs/ folders", file=sys.stderr, flush=True)


def image_tag(variant: str) -> str:
    """The image `invoke build` makes and compose uses for a variant, e.g. classifier-lab:gpu."""
    return f"{IMAGE_NAME}:{check_variant(variant)}"


def compose_command() -> list[str]:
    """`docker compose` (v2) when the plugin is there, else `docker-compose` (1.x)."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, encoding="utf-8", errors="replace")
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
    """The `docker build` command line for a variant, as `invoke build` runs it.

    Args:
        variant: "gpu" (tensorflow[and-cuda]) or "cpu" (tensorflow-cpu).
        tag: image name; default classifier-lab:<variant>, the one compose and `invoke lab` use.
        base_image: overrides the Dockerfile's pinned BASE_IMAGE (CI: the local stand-in).
        uid, gid: the container user's ids; default the host user's (1000 for root).
        network: build network, e.g. "host" where the engine has no bridge network.
        torch: PyTorch beside TensorFlow (the default): in the CPU image, its CPU
            build (from docker/wheels/, which `locks.stage_torch_wheels` fills, or
            PyTorch's index); in the GPU image, its CUDA build in an environment
            of its own (docker/Dockerfile's WITH_TORCH says why).
        cache_from: an image whose layers the build may reuse, e.g. the class's
            published image pulled beforehand: only the user and source layers are then built.

    Returns:
        The command, ending in the build context ".".
    """
    default_uid, default_gid = host_ids()
    command = [
        "docker", "build", "-f", "docker/Dockerfile",
        "--build-arg", f"VARIANT={check_variant(variant)}",
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


def read_env_file(path: Path) -> dict[str, str]:
    """The settings of an env file as compose reads them; {} when it does not exist.

    `KEY=value` lines; an `export ` prefix, blank lines and `#` comments
    ignored; a value's quotes removed (single quotes taken literally, double
    quotes with backslash escapes and `${VAR}` expanded, as a bare value is);
    a ` #` comment after a value dropped; a key without `=` sets nothing.
    Standard library only: `invoke build`, `lab`, `shell` and `down` run on a
    host whose environment may hold invoke alone (docs/container.md), and
    .devcontainer/init_env.py runs with the system's python3.

    Args:
        path: the file, e.g. the lab's .env.

    Returns:
        {key: value}.
    """
    return _env_values(path.read_text(encoding="utf-8").splitlines()) if path.exists() else {}


def _env_values(lines: list[str]) -> dict[str, str]:
    """{key: value} of an env file's lines, a key set twice taking its last value (read_env_file)."""
    values = {}
    for line in lines:
        if (key := _env_key(line)) is not None:
            values[key] = _env_value(line.split("=", 1)[1].strip())
    return values


def _env_key(line: str) -> str | None:
    """The key a line of an env file sets; None for a comment, a blank line or a line without `=`."""
    text = line.strip()
    if text.startswith("export "):
        text = text[len("export "):].lstrip()
    key, equals, _ = text.partition("=")
    return key.strip() if equals and not text.startswith("#") else None


_ENV_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_ENV_ESCAPES = {"n": "\n", "t": "\t"}


def _env_value(raw: str) -> str:
    """One value as compose reads it (read_env_file)."""
    if raw.startswith("'") and raw.find("'", 1) > 0:
        return raw[1:raw.find("'", 1)]
    if raw.startswith('"'):
        characters, index = [], 1
        while index < len(raw) and raw[index] != '"':
            if raw[index] == "\\" and index + 1 < len(raw):
                index += 1
                characters.append(_ENV_ESCAPES.get(raw[index], raw[index]))
            else:
                characters.append(raw[index])
            index += 1
        return _expand("".join(characters))
    return _expand(re.split(r"\s+#", raw, maxsplit=1)[0].rstrip())


def _expand(value: str) -> str:
    return _ENV_VARIABLE.sub(lambda match: os.environ.get(match.group(1) or match.group(2), ""), value)


# A value that needs no quotes in a .env file, read the same by read_env_file and by compose.
_PLAIN_ENV_VALUE = re.compile(r"[\w.,:/@+=%-]*")


def env_line(key: str, value: str) -> str:
    """`KEY=value` as an env file holds it, so that read_env_file (and compose) gives `value` back.

    A plain value stays bare; any other is single-quoted (compose takes it
    literally: no `$` expansion, no `#` comment), or double-quoted with
    backslash escapes when it holds a quote, a backslash or a line break.
    """
    if _PLAIN_ENV_VALUE.fullmatch(value):
        return f"{key}={value}\n"
    if not {"'", "\\", "\n"} & set(value):
        return f"{key}='{value}'\n"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'{key}="{escaped}"\n'


def write_env_file(variant: str = "gpu", *, port: int | None = None, tensorboard_port: int | None = None,
                   image: str | None = None, path: Path = ENV_FILE) -> dict[str, str]:
    """Write the settings compose reads from .env, keeping a token and settings already there.

    The token is generated once (secrets.token_urlsafe) and never empty; the
    file is git-ignored and readable by its owner only. COMPOSE_FILE makes a
    plain `docker compose ...` use the variant's compose file. A line whose
    setting is unchanged stays as it was written, comments too.

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
        COMPOSE_FILE=COMPOSE_FILES[check_variant(variant)],
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
    write_text(path, _env_text(path, values), mode=0o600)
    return values


def _env_text(path: Path, values: dict[str, str]) -> str:
    """The env file at `path` holding `values`, each line already there kept as its author wrote it.

    A setting whose value is unchanged keeps its line (quotes, `export`,
    `${VAR}`), and so do comments, blank lines and keys without `=`; a changed
    value gets a new line in its place, a setting not in `values` is left
    out, and new settings follow at the end.

    Args:
        path: the env file as it is now (it need not exist).
        values: every setting the file is to hold.

    Returns:
        The file's new text.
    """
    written = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    current = _env_values(written)
    keys = [_env_key(line) for line in written]
    # A key set twice takes its last value, as in compose: that line is the one to keep or replace.
    last = {key: index for index, key in enumerate(keys) if key is not None}
    lines = []
    for index, (line, key) in enumerate(zip(written, keys)):
        if key is None:
            lines.append(line + "\n")
        elif key in values and last[key] == index:
            lines.append(line + "\n" if current.get(key) == values[key] else env_line(key, values[key]))
    return "".join(lines + [env_line(key, value) for key, value in values.items() if key not in last])


def lab_url(values: dict[str, str]) -> str:
    """The JupyterLab URL with the token, from the .env settings."""
    return f"http://127.0.0.1:{values.get('LAB_PORT', '8888')}/lab?token={values['JUPYTER_TOKEN']}"


def _image_present(reference: str) -> bool:
    result = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", reference],
                            capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=60, env=docker_environment())
    return result.returncode == 0


def _image_variant(reference: str) -> str | None:
    """The LAB_VARIANT an image was built with (its Dockerfile sets it), or None."""
    environment = json.loads(capture(["docker", "image", "inspect", "--format", "{{json .Config.Env}}", reference],
                                     "docker image inspect", timeout=60) or "null") or []
    return next((item.split("=", 1)[1] for item in environment if item.startswith("LAB_VARIANT=")), None)


def is_local_build(reference: str) -> bool:
    """Whether `reference` names the image `invoke build` makes here (classifier-lab:VARIANT), not a published one."""
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
        if is_local_build(reference):
            raise ContainerError(f"image {reference} is not built yet: run `invoke build --variant {variant}` "
                                 "first (or set LAB_IMAGE to a published image)")
        print(f"pulling {reference} ...", flush=True)
        capture(["docker", "pull", reference], f"docker pull {reference}", timeout=3600)
    built_as = _image_variant(reference)
    if built_as and built_as != variant:
        raise ContainerError(f"LAB_IMAGE {reference} is the {built_as} image, not {variant}: "
                             f"use --variant {built_as}, or set LAB_IMAGE to the {variant} image")
    if is_local_build(reference) or "@sha256:" in reference:
        return reference
    # A tag can move; the digest names these exact bytes, in .env and in every run's manifest.
    digests = json.loads(capture(["docker", "image", "inspect", "--format", "{{json .RepoDigests}}", reference],
                                 "docker image inspect", timeout=60) or "[]") or []
    repository = reference.rsplit(":", 1)[0] if ":" in reference.rsplit("/", 1)[-1] else reference
    pinned = [digest for digest in digests if digest.split("@")[0] == repository]
    return (pinned or digests or [reference])[0]


def check_ports_free(ports: dict[int, str]) -> None:
    """A one-line ContainerError naming the first of `ports` ({host port: its flag}) another program holds."""
    for port, flag in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                raise ContainerError(f"port {port} on 127.0.0.1 is already in use by another program: stop it, "
                                     f"or choose another port with `{flag} {port + 1}`") from None


def compose_for(variant: str) -> list[str]:
    """The compose command line with the variant's compose file, e.g. docker compose -f docker-compose.cpu.yml."""
    return compose_command() + ["-f", COMPOSE_FILES[check_variant(variant)]]


def service_container(variant: str, service: str) -> str:
    """The id of the service's container in the variant's compose project, "" when none exists."""
    return capture(compose_for(variant) + ["ps", "-q", service], "docker-compose ps", timeout=120).strip()


def wait_healthy(container: str, timeout: float) -> str:
    """Poll the container's health until healthy or unhealthy (or timeout); return the last status."""
    deadline = time.monotonic() + timeout
    status = "starting"
    while time.monotonic() < deadline:
        state = capture(["docker", "inspect", "--format", "{{.State.Status}} {{.State.Health.Status}}", container],
                        "docker inspect", timeout=60).split()
        status = state[1] if state[0] == "running" and len(state) > 1 else state[0]
        if status in ("healthy", "unhealthy", "exited", "dead"):
            return status
        time.sleep(2)
    return status


def prepare(variant: str, image: str | None) -> str:
    """The checks every start makes: engine, image (pulled if published), a way to the GPU for the GPU image.

    Returns:
        The image reference to run (resolve_image's); data/ and runs/ exist afterwards.
    """
    check_engine()
    # First: without a way to the GPU the GPU image is of no use, built or not.
    route = check_gpu_support() if variant == "gpu" else None
    reference = resolve_image(variant, image)
    if route == "probe":
        probe_gpus(reference)
    for folder in MOUNTED_FOLDERS:
        (REPO_ROOT / folder).mkdir(exist_ok=True)
    return reference


def requested_image(values: dict[str, str]) -> str | None:
    """The LAB_IMAGE to run, from the environment or .env's `values`; None or "" means the local build."""
    # LAB_IMAGE in the environment wins (an empty one means the local build); else the one in .env.
    return os.environ["LAB_IMAGE"] if "LAB_IMAGE" in os.environ else values.get("LAB_IMAGE")
