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
it raises, a failed start removes the containers it created. The engine,
compose and .env are classifier/machinery/docker_engine.py; the lock files'
commands and the wheels a build stages are classifier/machinery/locks.py.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from classifier.machinery import platforms
from classifier.machinery.docker_engine import (
    ENV_FILE,
    REPO_ROOT,
    ContainerError,
    build_command,
    capture,
    check_engine,
    check_ports_free,
    check_variant,
    compose_for,
    docker_environment,
    is_local_build,
    lab_url,
    last_line,
    prepare,
    read_env_file,
    requested_image,
    service_container,
    stream,
    wait_healthy,
    write_env_file,
)
from classifier.machinery.locks import TORCH_CPU_LOCK, lock_commands, stage_torch_wheels, torch_cpu_source


def build(variant: str = "gpu", **options) -> str:
    """Build the lab image, showing docker's output; a failure ends in one line naming its cause.

    Args:
        variant: "gpu" (tensorflow[and-cuda]) or "cpu" (tensorflow-cpu).
        **options: docker_engine.build_command's (tag, base_image, uid, gid, network, torch, cache_from);
            with torch (the default) the CPU image gets PyTorch's CPU wheel staged into docker/wheels/.

    Returns:
        The image tag that was built.
    """
    command = build_command(variant, **options)
    if variant == "gpu" and platform.machine() in ("aarch64", "arm64"):
        raise ContainerError(f"the GPU image is linux/amd64 only and this machine is {platform.machine()}: "
                             "build the CPU image with --variant cpu (docs/arm64.md: Jetson)")
    check_engine()
    stage_torch_wheels(TORCH_CPU_LOCK if options.get("torch", True) and variant == "cpu" else None)
    built = command[command.index("-t") + 1]
    started = time.monotonic()
    stream(command, "docker build")
    print(f"built {built} in {time.monotonic() - started:.0f} s; start it with: invoke lab --variant {variant}")
    return built


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
    check_variant(variant)
    ports = {port: "--port", tensorboard_port: "--tensorboard-port"}
    for number, flag in ports.items():
        if not 1 <= number <= 65535:
            raise ContainerError(f"{flag} must be between 1 and 65535, got {number}")
    check_engine()
    settings = read_env_file(ENV_FILE)
    # Before the image is resolved (a pull takes minutes), so that a taken port is named at once. A lab that
    # is already up holds its own ports (`up -d` leaves it running); any other port it is given must be free.
    held = {settings.get("LAB_PORT"), settings.get("TENSORBOARD_PORT")} if service_container(variant, "lab") else set()
    check_ports_free({number: flag for number, flag in ports.items() if str(number) not in held})
    reference = prepare(variant, requested_image(settings))
    compose = compose_for(variant)
    values = write_env_file(variant, port=port, tensorboard_port=tensorboard_port,
                            image="" if is_local_build(reference) else reference)
    print(f"starting the lab from {reference} ...", flush=True)
    try:
        capture(compose + ["up", "-d", "--no-build"], "docker-compose up", ports=ports, image=reference)
        container = service_container(variant, "lab")
        status = wait_healthy(container, wait)
        if status != "healthy":
            logs = capture(["docker", "logs", "--tail", "20", container], "docker logs", timeout=60)
            raise ContainerError(f"JupyterLab did not become healthy within {wait:.0f} s (status {status}): "
                                 f"{last_line(logs)}")
    except ContainerError:
        subprocess.run(compose + ["down", "--timeout", "5"], cwd=REPO_ROOT, env=docker_environment(reference),
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
    variant = check_variant(variant or values.get("LAB_VARIANT", "gpu"))
    reference = prepare(variant, requested_image(values))
    # The lab's own variant stays in .env (`invoke down` stops that one); the ids and image are refreshed.
    write_env_file(values.get("LAB_VARIANT") or variant, image="" if is_local_build(reference) else reference)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    arguments = ["run", "--rm"] + ([] if interactive else ["-T"]) + ["lab", "bash"]
    arguments += ["-c", command] if command else []
    return subprocess.run(compose_for(variant) + arguments, cwd=REPO_ROOT, env=docker_environment(reference)).returncode


def down(variant: str | None = None) -> None:
    """Stop and remove the lab's containers; data/ and runs/ stay on the host."""
    variant = check_variant(variant or read_env_file(ENV_FILE).get("LAB_VARIANT", "gpu"))
    check_engine()
    capture(compose_for(variant) + ["down", "--timeout", "10"], "docker-compose down")
    print("the lab is stopped; data/ and runs/ stay on your disk")


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
        source = torch_cpu_source() if "torch-cpu" in command else []
        capture([uv, *command[1:]] + source + (["--upgrade"] if upgrade else []), "uv pip compile", timeout=1800,
                env=platforms.LOCK_ENVIRONMENT)
        written.append(REPO_ROOT / command[-1])
    return written
