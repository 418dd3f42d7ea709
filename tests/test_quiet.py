"""quiet.drop_native_notices: TensorFlow's absl INFO start-up lines are dropped from stderr, nothing else is."""

import os
import subprocess
import sys

from conftest import ROOT, run_invoke

# TensorFlow writes its oneDNN notice (port.cc) where oneDNN is on by default (x86 CPUs with AVX-512);
# this turns it on anywhere, so that the notices are there to drop on every machine.
NOTICES_ON = {"TF_ENABLE_ONEDNN_OPTS": "1"}

# A child that writes what a notebook kernel's stderr receives: TensorFlow's import,
# a C++-style warning, an unfinished line, and Python's own stderr.
CHILD = r"""
import os, sys
from classifier.machinery import quiet
quiet.drop_native_notices()
quiet.drop_native_notices()  # a second call changes nothing
import tensorflow
os.write(2, b"W0000 00:00:1.5   7 some_op.cc:12] a real warning\n")
os.write(2, b"I0000 00:00:1.5   7 other.cc:3] an info line\n")
sys.stderr.write("python's own stderr\n")
sys.stderr.flush()
os.write(2, b"no newline at the end")
"""


def test_only_absl_info_lines_are_dropped():
    result = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ("W0000 00:00:1.5   7 some_op.cc:12] a real warning\n"
                             "python's own stderr\n"
                             "no newline at the end")


def test_without_the_filter_tensorflow_writes_the_notices():
    # The control: the lines above are dropped, not absent.
    result = subprocess.run([sys.executable, "-c", "import classifier, tensorflow"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env={**os.environ, **NOTICES_ON})
    assert "All log messages before absl::InitializeLog() is called" in result.stderr
    assert "port.cc" in result.stderr


def _train_offline(tmp_path, **env):
    """`invoke train` whose download cannot reach its server (a mirror on a closed port), after TensorFlow's import."""
    return run_invoke("train", "--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--runs-dir",
                      str(tmp_path / "runs"), env={**NOTICES_ON, "CLASSIFIER_DATA_MIRROR": "http://127.0.0.1:9/", **env})


def test_an_invoke_task_error_is_the_one_line_without_the_notices(tmp_path):
    result = _train_offline(tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "error: cannot reach 127.0.0.1:9 to download train-images-idx3-ubyte.gz (offline, or the server is down); "
        "use a classroom mirror (--mirror URL or CLASSIFIER_DATA_MIRROR) or import a copy on disk "
        "(invoke data --dataset mnist --from PATH)"]
    assert result.stdout.startswith("[gpu_config] ")  # TensorFlow was imported: the notices were written, and dropped


def test_classifier_verbose_shows_the_notices_again(tmp_path):
    result = _train_offline(tmp_path, CLASSIFIER_VERBOSE="1")
    assert result.returncode == 2
    assert "All log messages before absl::InitializeLog() is called" in result.stderr
    assert "port.cc" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: cannot reach 127.0.0.1:9")
