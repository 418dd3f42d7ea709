"""The lecture's code as the lecture writes it: tensors, the data split, the three Keras builds, the two
trainers, evaluation, the PyTorch modules and loop, gpu_config and DurationTime.

Nothing here imports the lab's machinery or its commands; only classifier.config.
"""
