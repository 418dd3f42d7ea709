"""The names a config may hold, as plain data, kept apart from the code they name.

`config.py` validates against these tuples without importing TensorFlow, so a
mistyped flag is answered at once. `tests/test_registry.py` checks that each
tuple lists exactly what its module builds: the datasets in `datasets.DATASETS`, the models `recipes.build_model`
builds, `train.TRAINERS`, `torch_models.TORCH_MODELS`, `numerics.MODES`, and
that a recipe's settings are Config fields. The strategies have no table to
compare with: tests/test_strategy.py and tests/test_workers.py train with each.
"""

# The datasets the lab knows (classifier/machinery/datasets.py DATASETS holds where each is
# published and the SHA-256 of its files, in this order).
DATASETS = ("cifar10", "cifar100", "mnist", "fashion_mnist")

# The lecture's network built three ways (lecture 1.2 and 1.3), then the fast recipe's network.
LECTURE_MODELS = ("sequential_add", "sequential_list", "functional")
MODELS = (*LECTURE_MODELS, "fast_cnn")

# "fit": compile + fit (lecture 1.2); "tape": tf.data + GradientTape under tf.function (lecture 1.3).
TRAINERS = ("fit", "tape")

# The lecture's part 2, in PyTorch (classifier/lecture/torch_models.py, torch_train.py):
# "torch" is the DataLoader + zero_grad/backward/step loop; it trains these modules
# (the lecture's class, nn.Sequential blocks, a mix of the two, and the lecture's
# class as written, with both of its pitfalls).
TORCH_TRAINERS = ("torch",)
TORCH_MODELS = ("torch_module", "torch_sequential", "torch_mixed", "torch_lecture")

# "lecture": the lecture's network and schedule; "fast": classifier/machinery/recipes.py.
RECIPES = ("lecture", "fast")

# "default": one device; "mirrored": tf.distribute.MirroredStrategy; "multiworker":
# tf.distribute.MultiWorkerMirroredStrategy across the processes TF_CONFIG names (classifier/machinery/distribute.py).
STRATEGIES = ("default", "mirrored", "multiworker")

# "fastest": TensorFlow's own choices for the machine; "portable": the settings of
# classifier/machinery/numerics.py that give the same weights on other machines (docs/reproducibility.md).
NUMERICS = ("fastest", "portable")

# Each recipe's settings, one dict per recipe (airbench's `hyp`); benchmarks/NOTES.md measured each.
# "config" fills in the fields the person leaves out (config.resolve_recipe; a flag given always wins);
# the rest is read by classifier/machinery/recipes.py and benchmarks/gpu_time_to_accuracy.py.
HYP = {
    "lecture": {"config": {}, "label_smoothing": 0.0, "warmup_epochs": 0},
    "fast": {
        "config": {"model": "fast_cnn", "batch_size": 128, "epochs": 16, "learning_rate": 0.003, "val_split": 0.1},
        # Labels that give 10% of their weight to the other classes: a network that may not be certain
        # keeps learning from images it already gets right (+0.4% test accuracy).
        "label_smoothing": 0.1,
        # Adam's step rises linearly to learning_rate over the first epoch, then decays on a cosine.
        "warmup_epochs": 1,
    },
}
