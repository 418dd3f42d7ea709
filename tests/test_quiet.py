"""quiet.drop_native_notices: TensorFlow's absl INFO start-up lines are dropped from stderr, nothing else is."""

import subprocess
import sys

from conftest import ROOT

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
                            text=True, timeout=300)
    assert "All log messages before absl::InitializeLog() is called" in result.stderr
    assert "port.cc" in result.stderr
