"""The image-classifier lab: week 2 of the mobility big data course, as a package.

Three layers, each importing only those below it (tests/test_layers.py checks):

    config, registry  -> one frozen Config, the names it may hold and each recipe's settings (TensorFlow-free)
    lecture/          -> the lecture's code as the lecture writes it, in the order the data flows:
        tensors (1.1), split (the 80/20 split), models (three builds), train (`fit` 1.2, GradientTape 1.3),
        evaluate (the lecture's cross-checks), runtime (gpu_config, seeds, DurationTime),
        torch_models, torch_train (part 2 in PyTorch)
    machinery/        -> what the lab adds around it: datasets, download, loading, course_loaders, recipes,
        distribute, cluster, checkpoints, torch_runs, lifecycle, runs, files, numerics, report, quiet, notebook_outputs,
        tensorboard, tensorboard_events
    commands/         -> one module per task backend: train, train_torch, workers, data, plot, compare, course,
        reproduce, doctor, bench, export, container
    lab               -> what the notebooks import, and all they import

docs/package.md says in one line per module what each holds.
"""

import os

# TensorFlow's C++ start-up chatter (oneDNN notices, CPU feature lists) hides
# what students need to read; warnings and errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
