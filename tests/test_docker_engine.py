"""The lab's .env as compose reads it (python-dotenv) and as `invoke lab` writes it, and the way to a GPU that
recorded `docker info` outputs show (Docker Desktop's WSL2 backend, an engine with the NVIDIA toolkit, one without),
all without a Docker engine.

The engine itself, compose and the image are driven in tests/test_docker.py.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values

from classifier.machinery import docker_engine


def test_env_file_is_read_as_compose_reads_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_TEST_HOME", "/home/student")
    path = tmp_path / ".env"
    path.write_text(
        "# written by invoke lab\n"
        "\n"
        'LAB_VARIANT="cpu"\n'
        "export LAB_PORT=9999\n"
        "JUPYTER_TOKEN='abc def'  # a comment after a quoted value\n"
        "TENSORBOARD_PORT=6007 # a comment after a bare value\n"
        "DATA=${LAB_TEST_HOME}/data\n"
        "EMPTY=\n"
        "NO_EQUALS\n"
        "NAME=모빌리티 빅데이터\n",
        encoding="utf-8",
    )
    assert docker_engine.read_env_file(path) == {
        "LAB_VARIANT": "cpu", "LAB_PORT": "9999", "JUPYTER_TOKEN": "abc def", "TENSORBOARD_PORT": "6007",
        "DATA": "/home/student/data", "EMPTY": "", "NAME": "모빌리티 빅데이터",
    }


def test_a_missing_env_file_reads_as_empty(tmp_path):
    assert docker_engine.read_env_file(tmp_path / ".env") == {}


@pytest.mark.parametrize("value", [
    "8888", "ghcr.io/school/classifier-lab@sha256:" + "a" * 64, "", "two words", "a$HOME and ${HOME}", "x #y",
    "it's", 'say "hi"', "back\\slash", "line\nbreak", "모빌리티 빅데이터",
])
def test_every_value_written_reads_back_the_same(tmp_path, value):
    path = tmp_path / ".env"
    path.write_text(docker_engine.env_line("VALUE", value), encoding="utf-8")
    assert dotenv_values(path, interpolate=False) == {"VALUE": value}
    if "$" in value:
        # Single quotes: compose takes it literally (python-dotenv would still expand ${HOME}).
        assert path.read_text(encoding="utf-8") == f"VALUE='{value}'\n"
    assert docker_engine.read_env_file(path) == {"VALUE": value}


def test_writing_keeps_what_the_person_wrote_and_replaces_what_the_lab_sets(tmp_path):
    path = tmp_path / ".env"
    path.write_text(
        "# my settings\n"
        "export LAB_VARIANT=\"cpu\"\n"
        "PROXY='http://user:p#ss@proxy:3128'  # the school's proxy\n"
        "JUPYTER_TOKEN=\"tok en\"\n"
        "LAB_PORT=7000\n"
        "LAB_PORT=7001\n"
        "LAB_IMAGE=ghcr.io/school/classifier-lab:cpu-v1\n"
        "DATA=${HOME}/data",
        encoding="utf-8",
    )
    # A quoted variant is the variant, not '"cpu"' (which `invoke shell` and `down` would refuse).
    assert docker_engine.check_variant(docker_engine.read_env_file(path)["LAB_VARIANT"]) == "cpu"
    values = docker_engine.write_env_file("cpu", port=9999, image="", path=path)
    assert values["JUPYTER_TOKEN"] == "tok en" and values["PROXY"] == "http://user:p#ss@proxy:3128"
    assert docker_engine.read_env_file(path) == values
    uid, gid = docker_engine.host_ids()
    assert path.read_text(encoding="utf-8") == (
        "# my settings\n"
        "export LAB_VARIANT=\"cpu\"\n"
        "PROXY='http://user:p#ss@proxy:3128'  # the school's proxy\n"
        "JUPYTER_TOKEN=\"tok en\"\n"
        "LAB_PORT=9999\n"
        "DATA=${HOME}/data\n"
        f"COMPOSE_FILE=docker-compose.cpu.yml\nLAB_UID={uid}\nLAB_GID={gid}\nTENSORBOARD_PORT=6006\n"
    )


DATA = Path(__file__).parent / "data"
# A `docker` that answers `docker info --format '{{json .}}'` with a recorded output ($FAKE_DOCKER_INFO) and
# `docker run --gpus all ...` as $FAKE_GPU_RUN says: "ok", or the error the engine printed (exit 125).
FAKE_DOCKER = """#!{python}
import os, sys
arguments = sys.argv[1:]
if arguments[:1] == ["info"]:
    print(open(os.environ["FAKE_DOCKER_INFO"], encoding="utf-8").read())
elif arguments[:1] == ["run"] and "--gpus" in arguments:
    with open(os.environ["FAKE_DOCKER_LOG"], "a", encoding="utf-8") as log:
        log.write(" ".join(arguments) + "\\n")
    answer = os.environ["FAKE_GPU_RUN"]
    if answer != "ok":
        print(answer, file=sys.stderr)
        sys.exit(125)
else:
    sys.exit(f"fake docker: {{arguments}} not recorded")
"""


@pytest.fixture
def fake_docker(tmp_path, monkeypatch):
    """Put a `docker` on PATH that answers from tests/data/docker-info-NAME.json; returns set(NAME, gpu_run)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "docker"
    script.write_text(FAKE_DOCKER.format(python=sys.executable), encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(tmp_path / "runs.log"))

    def use(name: str, gpu_run: str = "ok") -> Path:
        monkeypatch.setenv("FAKE_DOCKER_INFO", str(DATA / f"docker-info-{name}.json"))
        monkeypatch.setenv("FAKE_GPU_RUN", gpu_run)
        return tmp_path / "runs.log"
    return use


@pytest.mark.parametrize("name, route", [
    ("engine-nvidia", "runtime"),  # Docker Engine with the NVIDIA Container Toolkit's runtime
    ("desktop-wsl2", "probe"),  # Docker Desktop, WSL2 backend: --gpus all works there without a runtime named nvidia
    ("engine-no-gpu", None),
    ("desktop-mac", None),
])
def test_the_way_to_a_gpu_is_judged_from_recorded_docker_info(name, route):
    info = json.loads((DATA / f"docker-info-{name}.json").read_text(encoding="utf-8"))
    assert docker_engine.gpu_route(info) == route


def test_docker_desktop_on_wsl2_is_accepted_after_a_gpu_test_container(fake_docker):
    log = fake_docker("desktop-wsl2")
    assert docker_engine.check_gpu_support() == "probe"  # the fault: this was "no NVIDIA runtime"
    docker_engine.probe_gpus("classifier-lab:gpu")
    assert log.read_text(encoding="utf-8") == "run --rm --gpus all --entrypoint true classifier-lab:gpu\n"


def test_docker_desktop_whose_gpu_test_container_fails_is_one_line(fake_docker):
    fake_docker("desktop-wsl2", gpu_run='docker: Error response from daemon: could not select device driver "" '
                                       "with capabilities: [[gpu]].")
    with pytest.raises(docker_engine.ContainerError) as raised:
        docker_engine.probe_gpus("classifier-lab:gpu")
    assert str(raised.value) == (
        "Docker Desktop could not give a container the GPU (`docker run --gpus all` said: docker: Error response "
        'from daemon: could not select device driver "" with capabilities: [[gpu]].): install NVIDIA\'s Windows '
        "driver, update WSL (`wsl --update`) and Docker Desktop, or use the CPU image: --variant cpu")


@pytest.mark.parametrize("name, start", [
    ("engine-no-gpu", "the Docker engine has no NVIDIA runtime for the GPU image: install the NVIDIA Container "
                      "Toolkit"),
    ("desktop-mac", "Docker Desktop gives containers a GPU only with its WSL2 backend on Windows "
                    "(kernel here: 6.10.14-linuxkit)"),
])
def test_an_engine_without_a_way_to_a_gpu_is_one_line_without_a_test_container(fake_docker, name, start):
    log = fake_docker(name)
    with pytest.raises(docker_engine.ContainerError) as raised:
        docker_engine.check_gpu_support()
    assert str(raised.value).startswith(start) and str(raised.value).endswith("--variant cpu")
    assert "\n" not in str(raised.value) and not log.exists()


def test_an_engine_with_the_nvidia_runtime_needs_no_test_container(fake_docker):
    log = fake_docker("engine-nvidia")
    assert docker_engine.check_gpu_support() == "runtime" and not log.exists()


def test_windows_ids_are_1000_and_said_once(monkeypatch, capsys):
    monkeypatch.delattr(os, "getuid", raising=False)
    docker_engine._say_windows_ids.cache_clear()
    assert docker_engine.host_ids() == docker_engine.host_ids() == (1000, 1000)
    assert capsys.readouterr().err == (
        "note: Windows has no user ids; the container user is 1000:1000, and Docker Desktop's file sharing lets it "
        "write the mounted data/ and runs/ folders\n")
