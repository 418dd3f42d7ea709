"""The lab's .env as compose reads it (python-dotenv) and as `invoke lab` writes it, without a Docker engine.

The engine itself, compose and the image are driven in tests/test_docker.py.
"""

from __future__ import annotations

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
        # Single quotes: compose takes it literally; python-dotenv would still expand ${HOME}.
        assert path.read_text(encoding="utf-8") == f"VALUE='{value}'\n"
    else:
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
