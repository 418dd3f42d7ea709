"""The image-classifier lab: week 2 of the mobility big data course, as a package.

The lecture, in the order the data flows:
    data        -> the dataset registry, loading and the lecture's train/validation split
    models      -> the lecture's network, written the three ways the lecture writes it
    train       -> the lecture's trainers: `fit` (1.2) and the GradientTape loop (1.3)
    evaluate    -> test metrics with the lecture's cross-checks
    report      -> sample grid, model picture, learning curves, confusion matrix
    tensors     -> lecture 1.1, tensor basics
    torch_models, torch_train -> part 2 in PyTorch: the network as nn.Module, the DataLoader loop

The machinery around it:
    registry    -> the names a config may hold, TensorFlow-free
    config      -> one frozen Config and the one way to override it
    download    -> fetching and importing dataset files, verified by SHA-256
    course_loaders -> the course's own Keras and torchvision loaders, served the verified files offline
    recipes     -> optimizers, schedules and the fast recipe's network
    distribute  -> several devices (MirroredStrategy) around the trainers
    checkpoints -> resume, with tf.train.CheckpointManager
    files       -> the one atomic-write helper
    runs        -> run folders and their evidence
    tensorboard, tensorboard_events -> TensorBoard event files in every run folder (the latter TensorFlow-free)
    runtime     -> gpu_config, seeds, DurationTime
    commands    -> what tasks.py calls: data, train, plot
    torch_run   -> `invoke train --trainer torch`: the same run folder, TensorFlow never imported
    lab         -> what the notebooks import
    reproduce, doctor, bench, container -> the other tasks
"""

import os

# TensorFlow's C++ start-up chatter (oneDNN notices, CPU feature lists) hides
# what students need to read; warnings and errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
