"""The lab as Windows' Python and Korean Windows meet it, on this Linux machine.

    PYTHONPATH=$PWD .venv/bin/python -m pytest tests/test_windows_like.py

tests/windows_like/sitecustomize.py takes away what Windows lacks (fcntl,
resource, pwd, grp for the lab's imports; signal.SIGALRM and setitimer) and
gives the lab's lock module Windows' msvcrt.locking. In that state every
module of classifier/ is imported, the Windows lock is held, waited for and
freed by a kill, and quick tests that train, stop on Ctrl-C and compare run.
The source is searched for Unix-only calls, and for text opened without an
encoding; the quick tests run again with Python's EncodingWarning an error in
the lab's modules, and under a Korean EUC-KR locale (Korean Windows reads and
writes cp949 unless told otherwise). A clone, data and runs folders named in
Hangul with spaces go through train, Ctrl-C, resume, export and compare.
"""

from __future__ import annotations

import ast
import json
import os
import pkgutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import classifier
from conftest import ROOT, run_folder_from, run_invoke

WINDOWS_LIKE = ROOT / "tests" / "windows_like"
LAB_SOURCES = sorted(path for path in (ROOT / "classifier").rglob("*.py")) + [ROOT / "tasks.py"]
# Quick tests that train (both trainers), stop on a Ctrl-C Python dropped, compare two runs, and take the
# dataset lock from two processes at once; each seconds long. -k keeps them found if a file gains tests.
QUICK = ["tests/test_commands.py", "tests/test_compare.py", "tests/test_resume.py", "tests/test_download.py",
         "-k", "test_training_writes_a_complete_run_folder or test_the_same_training_twice_is_identical or "
               "test_another_seed_is_different_settings or test_ctrl_c_that_python_drops_in_clean_up_code or "
               "test_two_imports_at_once_leave_one_verified_copy"]


def windows_like_environment(**extra: str) -> dict[str, str]:
    """This Python's environment with tests/windows_like/ first on PYTHONPATH, so every Python started has its state."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(WINDOWS_LIKE), str(ROOT)]), **extra}


def _python(code: str, env: dict[str, str], **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          encoding="utf-8", timeout=300, **options)


IMPORT_EVERY_MODULE = """
import importlib, json, pkgutil, signal, classifier
failed = {}
for module in pkgutil.walk_packages(classifier.__path__, "classifier."):
    try:
        importlib.import_module(module.name)
    except Exception as error:
        failed[module.name] = repr(error)
from classifier.machinery import files
try:
    exec("import fcntl", {"__name__": "classifier.probe"})
    refused = False
except ImportError:
    refused = True
print(json.dumps({"failed": failed, "fcntl_refused": refused, "sigalrm": hasattr(signal, "SIGALRM"),
                  "lock": files.fcntl is None and files.msvcrt.__name__}))
"""


def test_every_module_of_the_lab_imports_without_unix_modules():
    result = _python(IMPORT_EVERY_MODULE, windows_like_environment())
    assert result.returncode == 0, result.stderr[-2000:]
    state = json.loads(result.stdout)
    # The state holds: a lab module cannot import fcntl, there is no SIGALRM, and the lock is msvcrt's.
    assert (state["fcntl_refused"], state["sigalrm"], state["lock"]) == (True, False, "msvcrt")
    assert state["failed"] == {}
    assert len(list(pkgutil.walk_packages(classifier.__path__, "classifier."))) > 40  # every module, not a few


HOLD_LOCK = """
import sys, time
from pathlib import Path
from classifier.machinery import files
started = time.monotonic()
with files.exclusive_lock(Path(sys.argv[1])):
    print(f"held after {time.monotonic() - started:.1f}", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_the_windows_lock_waits_for_its_holder_and_is_freed_when_the_holder_is_killed(tmp_path):
    lock, env = tmp_path / ".lock", windows_like_environment()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock), "600"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, text=True, encoding="utf-8")
    try:
        assert holder.stdout.readline().startswith("held after")
        waiter = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock), "0"], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, text=True, encoding="utf-8")
        time.sleep(2.5)
        assert waiter.poll() is None  # still waiting: msvcrt's LK_LOCK tries once a second
        holder.kill()  # as a power cut or Task Manager would: the system frees the lock
        output, _ = waiter.communicate(timeout=60)
    finally:
        holder.kill()
        holder.wait()
    assert waiter.returncode == 0 and float(output.split()[-1]) >= 2.0
    assert lock.exists()  # the empty file stays; the lock was the system's, not the file's


# Attributes Windows' Python does not have, by module; a use guarded by hasattr(module, "name") is fine.
UNIX_ONLY_NAMES = {
    "signal": {"SIGALRM", "setitimer", "ITIMER_REAL", "SIGKILL", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGCHLD",
               "SIGQUIT", "alarm", "pause", "siginterrupt"},
    "os": {"killpg", "getpgid", "setsid", "setpgrp", "fork", "getuid", "getgid", "geteuid", "getegid",
           "getpwnam", "chown", "lchown", "sync", "getloadavg", "sched_getaffinity", "WNOHANG"},
}
UNIX_ONLY_MODULES = {"fcntl", "resource", "pwd", "grp", "termios", "tty", "pty", "posix"}


def _guards(tree: ast.AST) -> set[tuple[str, str]]:
    """(module, name) pairs that some hasattr(module, "name") in the file tests."""
    return {(call.args[0].id, call.args[1].value) for call in ast.walk(tree)
            if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "hasattr" and len(call.args) == 2
            and isinstance(call.args[0], ast.Name) and isinstance(call.args[1], ast.Constant)}


def _imports_in_try(tree: ast.AST) -> set[int]:
    """Line numbers of imports inside a `try:` that catches ImportError (the other system's branch)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any("ImportError" in ast.unparse(handler.type or ast.Name("x"))
                                             for handler in node.handlers):
            lines |= {inner.lineno for inner in node.body if isinstance(inner, (ast.Import, ast.ImportFrom))}
    return lines


def unix_only_uses(path: Path) -> list[str]:
    """Each Unix-only module import and attribute use in a source file, as "FILE:LINE name"."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    guarded, tried = _guards(tree), _imports_in_try(tree)
    guarded |= {(module, "getgid") for module, attribute in guarded if attribute == "getuid"}  # POSIX has both
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module = node.value.id
            if node.attr in UNIX_ONLY_NAMES.get(module, ()) and (module, node.attr) not in guarded:
                uses.append(f"{name}:{node.lineno} {module}.{node.attr}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and node.lineno not in tried:
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            uses += [f"{name}:{node.lineno} import {module}" for module in modules
                     if module.split(".")[0] in UNIX_ONLY_MODULES]
    return sorted(uses)


def _uses_in(*files: str) -> list[str]:
    return [use for path in LAB_SOURCES if str(path.relative_to(ROOT)) in files for use in unix_only_uses(path)]


def test_nothing_unix_only_on_a_students_path():
    assert [use for path in LAB_SOURCES for use in unix_only_uses(path)] == []


def test_the_search_finds_what_windows_lacks(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os, signal\nimport fcntl\ntry:\n    import pwd\nexcept ImportError:\n    pwd = None\n"
                      "signal.alarm(1)\nos.killpg(1, 9)\nif hasattr(os, 'getuid'):\n    os.getuid()\n",
                      encoding="utf-8")
    found, where = unix_only_uses(sample), "sample.py"
    assert found == [f"{where}:2 import fcntl", f"{where}:7 signal.alarm", f"{where}:8 os.killpg"]


def test_ctrl_c_handling_needs_no_sigalrm():
    assert _uses_in("classifier/machinery/lifecycle.py") == []


def test_stopping_workers_needs_no_process_groups():
    assert _uses_in("classifier/commands/workers.py") == _uses_in("classifier/machinery/local_workers.py") == []


def run_quick_tests(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    """The QUICK selection in a pytest of its own, with `env`; its output's last lines name what failed."""
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                           f"--basetemp={tmp_path / 'pytest'}", *QUICK],
                          cwd=ROOT, env=env, capture_output=True, text=True, encoding="utf-8",
                          errors="replace", timeout=900)


def _summary(result: subprocess.CompletedProcess) -> str:
    """The failures' E lines and the last lines of a pytest's output."""
    lines = (result.stdout + result.stderr).splitlines()
    return "\n".join([line for line in lines if line.startswith("E ")][:40] + lines[-8:])


def test_quick_tests_train_stop_on_ctrl_c_and_compare_without_unix_modules(tmp_path):
    result = run_quick_tests(windows_like_environment(), tmp_path)
    assert result.returncode == 0 and " passed" in result.stdout, _summary(result)


BYTES_OPENERS = {"os", "gzip", "bz2", "lzma", "tarfile", "zipfile", "Image", "webbrowser"}


def text_without_encoding(path: Path) -> list[str]:
    """Each open()/read_text()/write_text()/TextIOWrapper() of text that leaves the encoding to the locale."""
    uses = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        keywords = {keyword.arg for keyword in node.keywords}
        mode = node.args[1] if name == "open" and len(node.args) > 1 else next(
            (keyword.value for keyword in node.keywords if keyword.arg == "mode"), None)
        binary = isinstance(mode, ast.Constant) and "b" in str(mode.value)
        positional_encoding = {"open": 4, "read_text": 1, "write_text": 2, "TextIOWrapper": 2}.get(name, 0)
        # os.open is a descriptor; an archive module's open reads bytes.
        on_os = isinstance(node.func, ast.Attribute) and getattr(node.func.value, "id", "") in BYTES_OPENERS
        if positional_encoding and not binary and not on_os and "encoding" not in keywords \
                and len(node.args) < positional_encoding:
            uses.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    return uses


def test_every_text_file_the_lab_opens_names_its_encoding():
    # Korean Windows' Python reads and writes cp949 where the encoding is left out.
    sources = LAB_SOURCES + [ROOT / "install.py", *sorted((ROOT / ".devcontainer").glob("*.py"))]
    assert [use for path in sources for use in text_without_encoding(path)] == []


def lab_encoding_warnings() -> str:
    """PYTHONWARNINGS that makes EncodingWarning an error where a lab module opens text (one entry per module).

    Python matches a warning filter's module exactly, so each of the lab's modules is named; the
    warning of a bare open() is raised in its caller, the lab's line. (pathlib's read_text/write_text
    warn in pathlib: test_every_text_file_the_lab_opens_names_its_encoding finds those in the source.)
    """
    modules = ["tasks", "classifier", *(module.name for module in pkgutil.walk_packages(classifier.__path__,
                                                                                           "classifier."))]
    return ",".join(f"error::EncodingWarning:{module}" for module in modules)


def test_quick_tests_with_encoding_warnings_as_errors_in_the_lab(tmp_path):
    env = {**os.environ, "PYTHONWARNDEFAULTENCODING": "1", "PYTHONWARNINGS": lab_encoding_warnings()}
    result = run_quick_tests(env, tmp_path)
    assert result.returncode == 0 and " passed" in result.stdout, _summary(result)


KOREAN_LOCALE = "ko_KR.EUC-KR"


def test_quick_tests_under_a_korean_locale(tmp_path):
    """Python's locale encoding EUC-KR, as Korean Windows' is cp949: text the lab leaves to the locale breaks.

    Folder names stay ASCII here: under a non-UTF-8 locale on Linux, Python names files in EUC-KR
    bytes while TensorFlow writes its checkpoints under the UTF-8 bytes of the same name, a
    mismatch Windows does not have (its paths are Unicode). Hangul folders are tested below.
    """
    env = {**os.environ, "LC_ALL": KOREAN_LOCALE, "LANG": KOREAN_LOCALE}
    probe = _python("import locale; print(locale.getencoding())", env)
    if probe.stdout.strip() != "EUC-KR":
        pytest.fail(f"no {KOREAN_LOCALE} locale here: sudo apt-get install -y locales && "
                    f"sudo localedef -i ko_KR -f EUC-KR {KOREAN_LOCALE} ({probe.stdout.strip()})")
    env.pop("PYTHONUTF8", None)
    env.pop("PYTHONIOENCODING", None)
    result = run_quick_tests(env, tmp_path)
    assert result.returncode == 0 and " passed" in result.stdout, _summary(result)


def _invoke_in(clone: Path, *args: str) -> subprocess.CompletedProcess:
    """`invoke ARGS` from the clone, with the clone's own package (its PROJECT_ROOT is the clone)."""
    result = run_invoke(*args, cwd=clone, env={"PYTHONPATH": str(clone)})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _train_until_ctrl_c(clone: Path, train: list[str], log_path: Path) -> Path:
    """Start `invoke train`, press Ctrl-C once its first epoch is saved; the run folder."""
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen([sys.executable, "-m", "invoke", *train], cwd=clone, stdout=log,
                                   stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(clone)})
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            text = log_path.read_text(encoding="utf-8")
            state = run_folder_from(text) / "checkpoint" / "state.json" if "Run folder: " in text else None
            if state and state.exists() and json.loads(state.read_text(encoding="utf-8"))["epochs_done"] >= 1:
                process.send_signal(signal.SIGINT)
                break
            time.sleep(0.05)
        assert process.wait(timeout=120) == 130, log_path.read_text(encoding="utf-8")[-3000:]
    return run_folder_from(log_path.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_a_clone_data_and_runs_in_hangul_folders_with_spaces_train_resume_export_and_compare(fashion_source,
                                                                                             tmp_path):
    home = tmp_path / "홍길동 의 실습"  # C:\\Users\\홍길동 as a Korean student's clone, data and runs sit
    clone, data, runs = home / "lab 저장소", home / "데이터 폴더", home / "실행 결과"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, capture_output=True)
    _invoke_in(clone, "data", "--dataset", "fashion_mnist", "--from", str(fashion_source), "--data-dir", str(data))
    train = ["train", "--dataset", "fashion_mnist", "--data-dir", str(data), "--runs-dir", str(runs),
             "--limit", "2000", "--epochs", "4", "--seed", "11", "--trainer", "fit"]
    stopped = _train_until_ctrl_c(clone, train, tmp_path / "train.log")
    assert "continue with: invoke train --resume" in (tmp_path / "train.log").read_text(encoding="utf-8")
    assert "Resuming" in _invoke_in(clone, "train", "--resume", str(stopped)).stdout
    reference = run_folder_from(_invoke_in(clone, *train).stdout)
    _invoke_in(clone, "export", str(stopped), "--data-dir", str(data))
    assert {"savedmodel", "onnx"} <= {row["format"] for row in
                                      json.loads((stopped / "export.json").read_text(encoding="utf-8"))["rows"]}
    # Stopped and resumed, it ends where the uninterrupted run ends: compare says identical (exit 0).
    _invoke_in(clone, "compare", str(stopped), str(reference))
    assert str(stopped).startswith(str(runs)) and json.loads(
        (stopped / "manifest.json").read_text(encoding="utf-8"))["status"] == "complete"
