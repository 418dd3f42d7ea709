"""The lab container from the host: build, start, enter, stop, and lock its dependencies.

    invoke build --variant cpu     # -> build(variant="cpu")
    invoke lab                     # -> lab_up(): starts the lab, prints the URL with the token
    invoke shell                   # -> shell()
    invoke down                    # -> down()
    invoke lock                    # -> lock(): regenerates requirements/*.lock

Each helper runs one docker, docker compose or uv command and raises
`ContainerError` with a one-line message when it cannot.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from classifier.config import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("gpu", "cpu")
IMAGE_NAME = "classifier-lab"
ENV_FILE = REPO_ROOT / ".env"
COMPOSE_FILES = {"gpu": "docker-compose.yml", "cpu": "docker-compose.cpu.yml"}
# The arguments of every lock file; `requirements/lab.lock` is constrained by
# both TensorFlow locks so that it installs over either without a conflict.
_LOCK_PLATFORM = ["--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28"]


class ContainerError(UserError):
    """A container command could not run or failed; the message is one line."""


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ContainerError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return variant


def _run(command: list[str], *, capture: bool = False) -> str:
    """Run one command from the repository root; raise ContainerError if it fails."""
    try:
        result = subprocess.run(
            command, cwd=REPO_ROOT, check=True, text=True,
            stdout=subprocess.PIPE if capture else None,
        )
    except FileNotFoundError as error:
        raise ContainerError(f"{command[0]} not found: install it first") from error
    except subprocess.CalledProcessError as error:
        raise ContainerError(f"{' '.join(command[:3])} ... failed with exit code {error.returncode}") from error
    return result.stdout if capture else ""


def host_ids() -> tuple[int, int]:
    """The UID and GID the container user gets: the host user's, or 1000 for root.

    Returns:
        (uid, gid); root (0) maps to 1000 because the lab never runs as root.
    """
    uid, gid = (os.getuid(), os.getgid()) if hasattr(os, "getuid") else (1000, 1000)
    return (uid or 1000, gid or 1000)


def image_tag(variant: str) -> str:
    """The image name `docker compose` uses for a variant, e.g. classifier-lab:gpu."""
    return f"{IMAGE_NAME}:{_check_variant(variant)}"


def compose_command() -> list[str]:
    """`docker compose` (v2) when the plugin is there, else `docker-compose` (1.x)."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise ContainerError("neither `docker compose` nor `docker-compose` is installed")


def build_command(
    variant: str = "gpu",
    *,
    tag: str | None = None,
    base_image: str | None = None,
    uid: int | None = None,
    gid: int | None = None,
    network: str | None = None,
    torch: bool = False,
) -> list[str]:
    """The `docker build` command line for a variant (see `build`)."""
    default_uid, default_gid = host_ids()
    command = [
        "docker", "build", "-f", "docker/Dockerfile",
        "--build-arg", f"VARIANT={_check_variant(variant)}",
        "--build-arg", f"USER_UID={uid or default_uid}",
        "--build-arg", f"USER_GID={gid or default_gid}",
        "-t", tag or image_tag(variant),
    ]
    if base_image:
        command += ["--build-arg", f"BASE_IMAGE={base_image}"]
    if network:
        command += ["--network", network]
    if torch:
        command += ["--build-arg", "WITH_TORCH=1"]
    return command + ["."]


def build(
    variant: str = "gpu",
    *,
    tag: str | None = None,
    base_image: str | None = None,
    uid: int | None = None,
    gid: int | None = None,
    network: str | None = None,
    torch: bool = False,
) -> str:
    """Build the lab image.

    Args:
        variant: "gpu" (tensorflow[and-cuda]) or "cpu" (tensorflow-cpu).
        tag: image name; default classifier-lab:<variant>, the one compose uses.
        base_image: overrides the Dockerfile's pinned BASE_IMAGE (CI: the stand-in).
        uid, gid: the container user's ids; default the host user's (1000 for root).
        network: build network, e.g. "host" where the engine has no bridge.
        torch: add PyTorch's CPU build (cpu variant only; docker/Dockerfile's WITH_TORCH says why).

    Returns:
        The image tag that was built.
    """
    if torch and variant != "cpu":
        raise ContainerError("--torch needs --variant cpu: PyTorch's CUDA build cannot share the GPU image with "
                             "TensorFlow's (both write site-packages/nvidia/cudnn/lib; docker/Dockerfile says more)")
    command = build_command(variant, tag=tag, base_image=base_image, uid=uid, gid=gid, network=network, torch=torch)
    _run(command)
    return command[command.index("-t") + 1]


def _read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not line.lstrip().startswith("#"):
                values[key.strip()] = value.strip()
    return values


def write_env_file(variant: str = "gpu", *, port: int = 8888, path: Path = ENV_FILE) -> dict[str, str]:
    """Write the settings compose reads from .env, keeping a token already there.

    The token is generated once (secrets.token_urlsafe) and never empty; the
    file is git-ignored and readable by its owner only. COMPOSE_FILE makes a
    plain `docker compose ...` use the variant's compose file.

    Args:
        variant: "gpu" or "cpu".
        port: the host port of JupyterLab (127.0.0.1 only).
        path: the .env file.

    Returns:
        All settings in the file after writing.
    """
    values = _read_env_file(path)
    uid, gid = host_ids()
    if not values.get("JUPYTER_TOKEN"):
        values["JUPYTER_TOKEN"] = secrets.token_urlsafe(32)
    values.update(
        COMPOSE_FILE=COMPOSE_FILES[_check_variant(variant)],
        LAB_VARIANT=variant,
        LAB_UID=str(uid),
        LAB_GID=str(gid),
        LAB_PORT=str(port),
    )
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    temporary.chmod(0o600)
    temporary.replace(path)
    return values


def lab_url(values: dict[str, str]) -> str:
    """The JupyterLab URL with the token, from the .env settings."""
    return f"http://127.0.0.1:{values.get('LAB_PORT', '8888')}/lab?token={values['JUPYTER_TOKEN']}"


def lab_up(variant: str = "gpu", *, port: int = 8888, build_first: bool = True) -> str:
    """Start the lab (JupyterLab and TensorBoard) in the background and print its URL.

    Creates data/ and runs/ first, so that Docker does not create them as root.

    Args:
        variant: "gpu" or "cpu" (the compose file to use).
        port: the host port of JupyterLab.
        build_first: build the image (with the host user's ids) before starting.

    Returns:
        The URL with the token.
    """
    values = write_env_file(variant, port=port)
    for folder in ("data", "runs"):
        (REPO_ROOT / folder).mkdir(exist_ok=True)
    command = compose_command() + ["-f", COMPOSE_FILES[variant], "up", "-d"]
    _run(command + (["--build"] if build_first else []))
    url = lab_url(values)
    print(f"JupyterLab: {url}\nTensorBoard: http://127.0.0.1:6006/")
    return url


def shell(variant: str | None = None) -> None:
    """Open a bash shell in a new lab container (repository mounted, removed on exit)."""
    variant = variant or _read_env_file(ENV_FILE).get("LAB_VARIANT", "gpu")
    _run(compose_command() + ["-f", COMPOSE_FILES[_check_variant(variant)], "run", "--rm", "lab", "bash"])


def down(variant: str | None = None) -> None:
    """Stop and remove the lab's containers; data/ and runs/ stay on the host."""
    variant = variant or _read_env_file(ENV_FILE).get("LAB_VARIANT", "gpu")
    _run(compose_command() + ["-f", COMPOSE_FILES[_check_variant(variant)], "down"])


def lock_commands() -> list[list[str]]:
    """The uv commands that write requirements/{cpu,gpu,lab,torch-cpu,torch-gpu}.lock, in order.

    They are the commands recorded in each lock file's header. The torch locks
    are constrained by TensorFlow's and the lab's, so that installing one after
    the other changes no version.
    """
    def compile_(*extra: str, output: str) -> list[str]:
        return ["uv", "pip", "compile", "pyproject.toml", *extra, "--generate-hashes", *_LOCK_PLATFORM, "-o", output]

    return [
        compile_("--extra", "cpu", output="requirements/cpu.lock"),
        compile_("--extra", "gpu", output="requirements/gpu.lock"),
        compile_("--extra", "lab", "-c", "requirements/cpu.lock", "-c", "requirements/gpu.lock",
                 output="requirements/lab.lock"),
        compile_("--extra", "torch-cpu", "-c", "requirements/cpu.lock", "-c", "requirements/lab.lock",
                 output="requirements/torch-cpu.lock"),
        compile_("--extra", "torch-gpu", "-c", "requirements/gpu.lock", "-c", "requirements/lab.lock",
                 output="requirements/torch-gpu.lock"),
    ]


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
        _run([uv, *command[1:]] + source + (["--upgrade"] if upgrade else []))
        written.append(REPO_ROOT / command[-1])
    return written
