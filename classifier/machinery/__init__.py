"""What the lab adds around the lecture: the dataset registry and readers, downloads and verification, the
course's loaders, recipes, distribution and clusters, checkpoints, numerics, run folders and files, reports
and TensorBoard.

It builds on classifier.lecture and classifier.config, never on classifier.commands.
"""
