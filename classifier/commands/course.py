"""The course's own scripts, unchanged, in the lab: `invoke course SCRIPT`.

    invoke data --dataset cifar10                      # once: fills Keras' cache (classifier/machinery/course_loaders.py)
    invoke course ../detlec/01_classifiers/tf_classifier_basic.py

The course's TensorFlow scripts (goodgodgd/detlec, 01_classifiers) were
written for Keras 2. In Keras 3, which TensorFlow 2.21 ships, their
`num_class = tf.reduce_max(y).numpy() + 1` is a NumPy integer that
`layers.Dense(units=num_class)` refuses (`ValueError: Received an invalid
value for units`). TensorFlow's own way back is its legacy Keras: with
`TF_USE_LEGACY_KERAS=1`, `tf.keras` and `tensorflow.keras` are tf_keras, the
Keras 2 line (requirements/course.lock), and the scripts run as written. The
script runs with this environment's Python in the current folder (where it
writes its pictures and where `./data` is), as `python SCRIPT` would; its
`load_data()` reads the files `invoke data` verified, offline.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

from classifier.config import UserError

LEGACY_KERAS = {"TF_USE_LEGACY_KERAS": "1"}
INSTALL_HINT = "pip install --no-deps --require-hashes -r requirements/course.lock"


def run_script(script: str, args: tuple[str, ...] = ()) -> int:
    """Run a course script with TensorFlow's legacy Keras and return its exit status.

    Args:
        script: the script's path, e.g. tf_classifier_basic.py.
        args: command-line arguments for it.

    Raises:
        UserError: the script is not a file, or tf_keras is not installed.
    """
    path = Path(script)
    if not path.is_file():
        raise UserError(f"{script} is not a file; give the path of a course script, e.g. "
                        "../detlec/01_classifiers/tf_classifier_basic.py")
    if find_spec("tf_keras") is None:
        raise UserError(f"TensorFlow's legacy Keras (tf_keras) is not installed here; install it with: {INSTALL_HINT}")
    return subprocess.run([sys.executable, str(path), *args], env={**os.environ, **LEGACY_KERAS}).returncode
