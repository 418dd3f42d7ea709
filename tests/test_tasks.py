"""The invoke tasks as a person types them: bad input is one line, exit 2, nothing damaged."""

import gzip

import numpy as np
import pytest

from conftest import run_invoke


def _listing(folder):
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file() and p.name != ".lock")


def test_list_shows_every_task_with_a_description():
    result = run_invoke("--list")
    assert result.returncode == 0
    for name in ("data", "train", "plot", "tensors", "test", "bench", "doctor", "reproduce", "compare", "course"):
        assert f"  {name} " in result.stdout
    assert "Train a classifier" in result.stdout


def test_train_help_documents_every_flag():
    result = run_invoke("--help", "train")
    for flag in ("--dataset", "--model", "--trainer", "--epochs", "--batch-size", "--seed", "--val-split",
                 "--limit", "--runs-dir", "--data-dir", "--resume"):
        assert flag in result.stdout


def _assert_one_line_error(result, expected):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    # A message that lists what is accepted is compared whole, so that no accepted name can hide.
    assert errors[0] == expected if expected.startswith("error: ") else expected in errors[0], errors[0]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["data", "--dataset", "imagenet"], "error: unknown dataset 'imagenet'; accepted: cifar10, cifar100, mnist, fashion_mnist"),
        (["train", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["train", "--model", "resnet"], "error: unknown model 'resnet'; accepted: sequential_add, sequential_list, functional, fast_cnn"),
        (["train", "--trainer", "sgd"], "error: unknown trainer 'sgd'; accepted: fit, tape, torch"),
        (["train", "--epochs", "0"], "epochs must be at least 1, got 0"),
        (["train", "--epochs", "two"], "epochs must be int, got 'two'"),
        (["train", "--batch-size", "0"], "batch_size must be at least 1, got 0"),
        (["train", "--limit", "0"], "limit must be at least 1"),
        (["train", "--val-split", "1"], "val_split must be between 0 and 1 (exclusive), got 1.0"),
        (["train", "--resume", "/nonexistent/run"], "--resume /nonexistent/run is not a run folder"),
        (["plot", "--model", "vgg"], "unknown model 'vgg'"),
        (["bench", "--limit", "abc"], "error: --limit must be a whole number, got 'abc'; see invoke --help bench"),
        # Whole-number flags are typed by their int default, converted by invoke's parser, refused as one line.
        (["lab", "--port", "x"], "error: --port must be a whole number, got 'x'; see invoke --help lab"),
        (["lab", "--tensorboard-port", "6006.5"], "error: --tensorboard-port must be a whole number, got '6006.5'; "
                                                  "see invoke --help lab"),
        (["bench", "--target", "0.9", "--seeds", "three"], "error: --seeds must be a whole number, got 'three'; "
                                                           "see invoke --help bench"),
        (["train", "--workers", "two"], "error: --workers must be a whole number, got 'two'; see invoke --help train"),
        (["train", "--workers", "1"], "error: --workers must be between 2 and 8, got 1"),
        (["bench", "--target", "0.9", "--budget", "3 minutes"], "error: --budget must be a number, got '3 minutes'"),
        (["compare", "a", "b", "--tolerance", "x"], "error: --tolerance must be a number, got 'x'"),
        (["bench", "--epochs", "1"], "epochs must be at least 2"),
        (["bench", "--target", "0.91,high"], "error: --target 'high': give test accuracies between 0 and 1 and/or the word "
                                             "lecture, e.g. --target lecture,0.935"),
        (["bench", "--target", "0.91,1.2"], "--target '1.2': give test accuracies between 0 and 1"),
        (["train", "--recipe", "turbo"], "error: unknown recipe 'turbo'; accepted: lecture, fast"),
        (["train", "--strategy", "tpu"], "error: unknown strategy 'tpu'; accepted: default, mirrored, multiworker"),
        (["train", "--seed", "4294967296"], "error: seed must be between 0 and 4294967295 (2**32 - 1), got 4294967296"),
        (["train", "--seed", "-1"], "error: seed must be between 0 and 4294967295 (2**32 - 1), got -1"),
        (["train", "--batch-size", str(2**63)], f"error: batch_size must be at most 2147483647, got {2**63}"),
        (["plot", "--output", "/nonexistent/folder/m.png"], "--output folder /nonexistent/folder does not exist"),
        (["bench", "--limit", "-5"], "error: --limit must be 0 (all 60,000 training images) or a number of images, "
                                     "got -5"),
        (["bench", "--limit", "-5", "--target", "0.9"], "error: --limit must be 0 (all 60,000 training images) or a "
                                                        "number of images, got -5"),
        # invoke's own parse errors, said as the lab's one line (tasks.py wraps invoke's parsing).
        (["train", "--bogus"], "error: unknown task or flag '--bogus'; see invoke --help train"),
        (["trian"], "error: unknown task or flag 'trian'; see invoke --list"),
        (["--help", "trian"], "error: unknown task or flag 'trian'; see invoke --list"),
        (["train", "--epochs"], "error: --epochs needs a value; see invoke --help train"),
        (["lab", "--tensorboard-port"], "error: --tensorboard-port needs a value; see invoke --help lab"),
        (["reproduce"], "error: 'reproduce' did not receive required positional arguments: 'run'; "
                        "see invoke --help reproduce"),
    ],
)
def test_bad_flags(args, expected):
    _assert_one_line_error(run_invoke(*args), expected)


def test_from_path_that_does_not_exist(tmp_path):
    result = run_invoke("data", "--dataset", "mnist", "--from", str(tmp_path / "usb"), "--data-dir", str(tmp_path / "d"))
    _assert_one_line_error(result, f"--from path {tmp_path / 'usb'} does not exist")


def test_wrong_checksum_truncated_and_html_imports_leave_the_cache_alone(tmp_path):
    data_dir = tmp_path / "data"
    (data_dir / "mnist").mkdir(parents=True)
    (data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"an earlier file")
    before = _listing(data_dir)
    source = tmp_path / "usb"
    source.mkdir()
    labels = source / "t10k-labels-idx1-ubyte.gz"

    labels.write_bytes(b"\x1f\x8b" + bytes(4540))  # right size, wrong bytes
    result = run_invoke("data", "--dataset", "mnist", "--from", str(labels), "--data-dir", str(data_dir))
    _assert_one_line_error(result, "does not match the published data (checksum")

    # The first 1000 bytes of a gzip file: its stream ends early, as an interrupted copy's does.
    labels.write_bytes(gzip.compress(np.random.default_rng(0).bytes(8000))[:1000])
    result = run_invoke("data", "--dataset", "mnist", "--from", str(labels), "--data-dir", str(data_dir))
    _assert_one_line_error(result, "is truncated: 1000 of 4542 bytes")

    labels.write_text("<html><head><title>404 Not Found</title></head></html>")
    result = run_invoke("data", "--dataset", "mnist", "--from", str(labels), "--data-dir", str(data_dir))
    _assert_one_line_error(result, "is an HTML/XML page")
    assert _listing(data_dir) == before


def test_html_page_from_a_mirror_is_refused(http_root, tmp_path):
    served, url, _ = http_root
    (served / "cifar-10-python.tar.gz").write_text("<!DOCTYPE html><title>Service unavailable</title>")
    result = run_invoke("data", "--dataset", "cifar10", "--mirror", url, "--data-dir", str(tmp_path / "d"))
    _assert_one_line_error(result, "HTML/XML page")
    assert not (tmp_path / "d" / "cifar10" / "cifar-10-python.tar.gz").exists()


def test_data_folder_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_invoke("data", "--dataset", "mnist", "--from", str(tmp_path), "--data-dir", str(blocker / "data"))
    _assert_one_line_error(result, f"data folder {blocker / 'data' / 'mnist'} cannot be written")


def test_tensors_task_runs():
    result = run_invoke("tensors")
    assert result.returncode == 0
    assert "Shape of tensor: (2, 2, 3)" in result.stdout
    assert "[None, 3]" in result.stdout


def test_a_full_disk_is_one_line_not_a_traceback(fashion_source, small_tmpfs):
    """`invoke data --from` onto a disk with no room: one line naming the file, exit 2, nothing half-written kept."""
    (small_tmpfs / "filler").write_bytes(b"\0" * (160 * 2**20 - 8 * 2**20))  # leaves less than the 30 MB import
    data_dir = small_tmpfs / "data"
    result = run_invoke("data", "--dataset", "fashion_mnist", "--from", str(fashion_source), "--data-dir", str(data_dir))
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write ") and lines[0].endswith(
        "no space left on device"), lines
    assert "Traceback" not in result.stderr
    # Every file is written under a temporary name first: no partial file under a final name stays behind.
    kept = {path.name: path.stat().st_size for path in data_dir.rglob("*.gz")}
    assert kept == {name: (fashion_source / name).stat().st_size for name in kept}, kept


def test_resume_with_settings_is_one_line_naming_the_flags(tmp_path):
    result = run_invoke("train", "--resume", str(tmp_path), "--epochs", "3", "--batch-size", "64")
    _assert_one_line_error(result, "--resume continues with the run's own settings (its config.json); "
                                   "drop --epochs, --batch-size")


def test_a_taken_port_is_named_before_the_image_is_looked_at(tmp_path):
    """`invoke lab` with JupyterLab's port held by another program: the port and the flag, at once (no pull, no wait)."""
    import os
    import socket
    import sys
    import time

    if sys.platform == "win32":
        pytest.skip("the stand-in docker is a shell script")
    calls = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # A Docker engine and Compose v2 with no lab running; any other command (an image lookup, a pull) fails.
    (bin_dir / "docker").write_text(f"""#!/bin/sh
echo "$*" >> '{calls}'
case "$*" in
  version*) echo 28.2.2 ;;
  "compose version") echo "Docker Compose version v2.29.7" ;;
  compose*" ps -q lab") ;;
  *) echo "not expected: $*" >&2; exit 1 ;;
esac
""", encoding="utf-8")
    (bin_dir / "docker").chmod(0o755)
    with socket.socket() as taken, socket.socket() as free:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        free.bind(("127.0.0.1", 0))
        port, other = taken.getsockname()[1], free.getsockname()[1]
        free.close()
        started = time.monotonic()
        result = run_invoke("lab", "--variant", "cpu", "--port", str(port), "--tensorboard-port", str(other),
                            env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "LAB_IMAGE": ""})
    assert time.monotonic() - started < 60
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [f"error: port {port} on 127.0.0.1 is already in use by another program: "
                                          f"stop it, or choose another port with `--port {port + 1}`"]
    assert not any("image" in line or "pull" in line for line in calls.read_text().splitlines())
