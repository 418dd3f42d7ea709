"""The image-classifier lab: week 2 of the mobility big data course, as a package.

Stages, in the order the data flows:
    config   -> one frozen Config and the one way to override it
    data     -> the dataset registry, loading and the train/validation split
    download -> fetching and importing dataset files, verified by SHA-256
    models   -> the lecture's network, three ways, behind build_model()
    train    -> the `fit` and `tape` trainers
    evaluate -> test metrics with the lecture's cross-checks
    report   -> sample grid, model picture, learning curves, confusion matrix
    runs     -> run folders and their evidence
    pipeline -> the commands that tasks.py calls
"""

import os

# TensorFlow's C++ start-up chatter (oneDNN notices, CPU feature lists) hides
# what students need to read; warnings and errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
