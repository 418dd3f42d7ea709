"""The hash-locked files: what `invoke lock` runs, each lock read (and checked against `packaging`), and the wheels a build stages."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from classifier.machinery import locks

ROOT = Path(__file__).resolve().parent.parent
REAL_LOCKS = sorted((ROOT / "requirements").glob("*.lock"))


@pytest.mark.parametrize("lock", REAL_LOCKS, ids=lambda path: path.name)
def test_every_real_lock_reads_as_pins_each_with_its_hashes(lock):
    text = lock.read_text(encoding="utf-8")
    pins = locks.read_lock(lock)
    # One pin per line that starts a requirement, every --hash kept with its own pin.
    assert len(pins) == len(re.findall(r"^[^\s#-]", text, flags=re.MULTILINE)) > 0
    assert sum(len(pin.hashes) for pin in pins) == text.count("--hash=")
    assert all(pin.hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", value) for value in pin.hashes) for pin in pins)
    assert len({pin.name for pin in pins}) == len(pins)
    assert locks.locked_versions(lock) == {pin.name: pin.version for pin in pins}
    # The lab's standard-library reading of each pin is packaging's.
    parsed = [Requirement(pin.requirement) for pin in pins]
    assert [(pin.name, pin.version, pin.marker) for pin in pins] == [
        (canonicalize_name(item.name), next(spec.version for spec in item.specifier if spec.operator == "=="),
         str(item.marker) if item.marker else "") for item in parsed]


def _exact_pins(requirements: list[str]) -> dict[str, str]:
    exact = {}
    for line in requirements:
        requirement = Requirement(line)
        exact.update({canonicalize_name(requirement.name): spec.version
                      for spec in requirement.specifier if spec.operator == "=="})
    return exact


@pytest.mark.parametrize("command", [command for command in locks.lock_commands() if "--extra" in command],
                         ids=lambda command: Path(command[-1]).name)
def test_each_lock_pins_what_pyproject_pins_for_it(command):
    """Every exact pin of pyproject.toml (the dependencies and the lock's extra) is the version its lock holds."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extra = command[command.index("--extra") + 1]
    wanted = _exact_pins(project["dependencies"] + project["optional-dependencies"][extra])
    locked = locks.locked_versions(ROOT / command[-1])
    assert {name: locked.get(name) for name in wanted} == wanted


def test_a_lock_line_with_a_marker_an_option_and_comments(tmp_path):
    lock = tmp_path / "odd.lock"
    lock.write_text("# made by hand\n--index-url https://pypi.org/simple\n\n"
                    "Foo_Bar.baz==1.0 ; python_version >= \"3.11\" \\\n"
                    "    --hash=sha256:" + "a" * 64 + " \\\n    --hash=sha256:" + "b" * 64 + "\n    # via x\n"
                    "qux==2.0+cpu --hash=sha256:" + "c" * 64 + "  # the local build\n", encoding="utf-8")
    pins = locks.read_lock(lock)
    assert [(pin.name, pin.version, len(pin.hashes)) for pin in pins] == [("foo-bar-baz", "1.0", 2), ("qux", "2.0+cpu", 1)]
    assert pins[0].marker == 'python_version >= "3.11"'
    assert locks.local_wheel_pins(lock) == [pins[1]]
    # What pip download reads back is the same pins.
    again = tmp_path / "again.lock"
    again.write_text("".join(pin.lines() for pin in pins), encoding="utf-8")
    assert locks.read_lock(again) == pins


def test_lock_commands_match_the_lock_files_headers():
    for command in locks.lock_commands():
        lock_file = ROOT / command[-1]
        header = lock_file.read_text().splitlines()[1]
        recorded = header.split("uv ", 1)[1].split()
        assert recorded == command[1:], f"{lock_file.name} was made by {header!r}"


# docker/wheels/: the wheel no index the build reaches has, staged by `invoke build` from pip's own sources.

def _fake_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal wheel pip accepts (METADATA, WHEEL, RECORD), standing in for PyTorch's 190 MB CPU wheel."""
    import zipfile

    dist_info = f"{name}-{version}.dist-info"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{dist_info}/RECORD", "")
    return path


@pytest.fixture
def wheel_source(tmp_path, monkeypatch):
    """A find-links folder holding a local-version wheel, a lock that pins it by hash, and pip pointed at that folder only."""
    links = tmp_path / "links"
    links.mkdir()
    wheel = _fake_wheel(links, "labtorchstandin", "2.13.0+cpu")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    lock = tmp_path / "torch-cpu.lock"
    lock.write_text("# header\nnumpy==2.4.6 \\\n    --hash=sha256:" + "0" * 64 + "\n    # via torch\n"
                    f"labtorchstandin==2.13.0+cpu \\\n    --hash=sha256:{digest}\n    # via classifier (pyproject.toml)\n")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    return lock, wheel


def test_build_stages_the_locked_local_wheel_and_drops_stale_ones(wheel_source, tmp_path):
    lock, wheel = wheel_source
    folder = tmp_path / "wheels"
    folder.mkdir()
    (folder / "README.md").write_text("kept\n")
    stale = _fake_wheel(folder, "labtorchstandin", "2.12.0+cpu")  # an earlier lock's wheel
    staged = locks.stage_torch_wheels(lock, folder)
    # Only the pin with a local version (+cpu) is staged: numpy comes from PyPI in the build.
    assert [path.name for path in staged] == [wheel.name]
    assert staged[0].read_bytes() == wheel.read_bytes() and staged[0].stat().st_mode & 0o777 == 0o644
    assert not stale.exists() and sorted(path.name for path in folder.iterdir()) == ["README.md", wheel.name]
    # A second build finds the wheel in place and keeps it (same file, so the same cached layer).
    inode = staged[0].stat().st_ino
    assert locks.stage_torch_wheels(lock, folder) == staged and staged[0].stat().st_ino == inode
    # The GPU image, or one without PyTorch: the folder is emptied of wheels, so the image does not carry it.
    assert locks.stage_torch_wheels(None, folder) == []
    assert [path.name for path in folder.iterdir()] == ["README.md"]


def test_without_the_wheel_the_folder_stays_empty_and_the_build_says_it_asks_the_index(wheel_source, tmp_path,
                                                                                        capsys):
    lock, wheel = wheel_source
    wheel.unlink()  # pip finds it nowhere
    folder = tmp_path / "wheels"
    assert locks.stage_torch_wheels(lock, folder) == []
    assert list(folder.iterdir()) == []  # no staging folder, no half-written wheel
    assert capsys.readouterr().out == ("note: pip on this machine has no copy of labtorchstandin==2.13.0+cpu; "
                                       "the build downloads it from PyTorch's CPU index\n")


def test_the_real_torch_lock_stages_only_pytorchs_cpu_wheel():
    pins = locks.local_wheel_pins(locks.TORCH_CPU_LOCK)
    assert [str(pin.requirement) for pin in pins] == ["torch==2.13.0+cpu"]
    assert all(line.startswith(("torch==", "    --hash=sha256:")) for line in pins[0].lines().splitlines())
