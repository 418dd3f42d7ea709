"""The lab's commands. `invoke --list` shows them; `invoke --help TASK` shows a task's flags.

Each task turns its flags into a call to one function of the `classifier`
package. Bad input ends the task with one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

from invoke import Exit, task

from classifier.config import Interrupted, UserError
from classifier.machinery import usage_errors

_CONFIG_HELP = {
    "dataset": "cifar10 (default), cifar100, mnist or fashion_mnist",
    "model": "sequential_add (default), sequential_list, functional (the lecture's network) or fast_cnn; with "
             "--trainer torch: torch_module (default), torch_sequential, torch_mixed or torch_lecture (both pitfalls)",
    "data_dir": "dataset cache (default: $CLASSIFIER_DATA_DIR or ./data)",
}


# invoke's own parse errors (an unknown flag, a missing value) as the lab's one line and exit 2.
usage_errors.install()


def _quiet():
    """TensorFlow's C++ start-up notices off stderr, as in the notebooks (CLASSIFIER_VERBOSE=1 shows them)."""
    from classifier.machinery import quiet

    quiet.drop_native_notices()


def _run(function, *args, **kwargs):
    """Call into the package; a UserError becomes one line and a non-zero exit."""
    try:
        return function(*args, **kwargs)
    except UserError as error:
        code = 130 if isinstance(error, Interrupted) else 2
        raise Exit(f"error: {error}", code=code) from None
    except KeyboardInterrupt:
        raise Exit("interrupted", code=130) from None
    except OSError as error:
        # A full disk or a folder that vanished mid-run: every file is written
        # under a temporary name first, so earlier runs and the cache are intact.
        where = f"{error.filename}: " if error.filename else ""
        raise Exit(f"error: {where}{error.strerror or error}", code=2) from None


def _float(flag: str, value: str) -> float:
    """A number flag, answered in one line when it is not one.

    Unlike an int default, a float default would make invoke's help show the
    flag without a value (`--budget`, as a switch: invoke/parser/context.py
    names only STRING and INT), so number flags are strings converted here.
    """
    try:
        return float(value)
    except ValueError:
        raise Exit(f"error: --{flag} must be a number, got {value!r}", code=2) from None


def _config(**overrides):
    from classifier.config import make_config

    return _run(make_config, **{key: value for key, value in overrides.items() if value is not None})


@task(help={
    "dataset": _CONFIG_HELP["dataset"],
    "data_dir": _CONFIG_HELP["data_dir"],
    "from_": "import from a file or folder on disk (a USB stick, a shared drive) instead of downloading",
    "mirror": "base URL to download from instead of the published one (or $CLASSIFIER_DATA_MIRROR)",
    "torchvision_root": "the root= the course's torchvision script passes, where its files are laid out "
                        "(default: the data folder, the course's './data' run from the project root)",
})
def data(c, dataset="cifar10", data_dir="", from_="", mirror="", torchvision_root=""):
    """Download (or import) a dataset into the cache and verify every file's SHA-256."""
    _quiet()
    from classifier.commands.data import data_command

    _run(data_command, dataset, data_dir=data_dir, mirror=mirror, source=from_, torchvision_root=torchvision_root)


@task(help={
    "dataset": _CONFIG_HELP["dataset"],
    "model": _CONFIG_HELP["model"],
    "trainer": "fit (model.fit, default), tape (tf.data + GradientTape + tf.function) "
               "or torch (PyTorch: DataLoader + zero_grad/backward/step)",
    "epochs": "passes over the training images (default 5)",
    "batch_size": "images per step (default 32)",
    "seed": "random seed for weights, data order and dropout (default 42)",
    "val_split": "fraction at the end of the training images used to validate (default 0.2)",
    "limit": "train on the first N training images only, for a quick run (default: all)",
    "runs_dir": "where the run folder goes (default: $CLASSIFIER_RUNS_DIR or ./runs)",
    "data_dir": _CONFIG_HELP["data_dir"],
    "recipe": "lecture (default: the lecture's network and schedule) or fast (higher accuracy, same minutes)",
    "strategy": "default (one device), mirrored (all visible GPUs) or multiworker (the machines TF_CONFIG names)",
    "resume": "continue the stopped run in this run folder from its last finished epoch",
    "numerics": "fastest (TensorFlow's choices for this machine) or portable (the same weights on other "
                "machines, see docs/reproducibility.md); default: $CLASSIFIER_NUMERICS, else fastest "
                "(the lab image sets portable)",
    "tensorboard": "true (default): write TensorBoard event files into RUN/tensorboard; false: none",
    "workers": "start this many multiworker processes on this machine (127.0.0.1), e.g. 2 for a class demo "
               "(with --trainer torch: torch.distributed, gloo on CPU, NCCL with a GPU per worker); default 0: "
               "this process alone",
})
def train(c, dataset=None, model=None, trainer=None, epochs=None, batch_size=None, seed=None,
          val_split=None, limit=None, runs_dir=None, data_dir=None, recipe=None, strategy=None, resume="",
          numerics=None, tensorboard=None, workers=0):
    """Train a classifier, evaluate it on the test set and write a run folder."""
    _quiet()
    from classifier.machinery import numerics as numerics_module
    from classifier.commands.train import train_command

    if not resume:
        numerics = _run(numerics_module.resolve, numerics)  # the flag, else $CLASSIFIER_NUMERICS, else fastest
    flags = {key: value for key, value in dict(
        dataset=dataset, model=model, trainer=trainer, epochs=epochs, batch_size=batch_size, seed=seed,
        val_split=val_split, limit=limit, runs_dir=runs_dir, data_dir=data_dir, recipe=recipe, strategy=strategy,
        numerics=numerics,
        tensorboard=tensorboard,
    ).items() if value is not None}
    if resume and flags:
        names = ", ".join(f"--{key.replace('_', '-')}" for key in flags)
        raise Exit(f"error: --resume continues with the run's own settings (its config.json); drop {names}", code=2)
    if workers:
        from classifier.commands.workers import start_local_workers

        if strategy not in (None, "multiworker"):
            raise Exit(f"error: --workers trains with --strategy multiworker, not {strategy}", code=2)
        _run(start_local_workers, _config(**flags), workers, resume=resume,
             given=frozenset(flags))
        return
    _run(train_command, _config(**flags), resume=resume, given=frozenset(flags))


@task(help={
    "limit": "benchmark on the first N Fashion-MNIST training images (default 12000; with --target, 0 is all)",
    "epochs": "epochs per measurement, the first one a warm-up (default 3); with a numeric --target: the lecture "
              "recipe's most (with --target lecture it trains its own 5)",
    "repeats": "measurements per subject; the median is reported (default 3)",
    "output": "path without suffix for the .json and .md results (default benchmarks/results/latest, "
              "with --target benchmarks/results/time_to_accuracy)",
    "data_dir": _CONFIG_HELP["data_dir"],
    "subjects": "comma-separated: reference (the lecture's script), fit, tape, fast (the fast recipe), torch "
                "(default reference,fit,tape,torch; torch where PyTorch is installed)",
    "numerics": "comma-separated numerics modes to measure each subject under, e.g. fastest,portable "
                "(default fastest); with two, a table of their cost",
    "target": "instead: training seconds until the test accuracy first reaches this, per recipe (e.g. 0.91, "
              "or several: 0.91,0.94; lecture: the lecture recipe's final test accuracy in the same run)",
    "seeds": "with --target: seeds per recipe, mean and spread reported (default 3)",
    "recipes": "with --target: comma-separated RECIPE or RECIPE:EPOCHS rows, e.g. lecture,fast:2,fast "
               "(default lecture,fast)",
    "budget": "with --target: also each recipe's test accuracy within this many training seconds (default 0: off)",
})
def bench(c, limit=12000, epochs=3, repeats=3, output="", data_dir="", subjects="", numerics="fastest",
          target="", seeds=3, recipes="", budget=""):
    """Time the lecture's script against the lab's trainers, or (--target) each recipe's time to accuracy."""
    _quiet()
    from classifier.commands.bench import run_benchmark, run_time_to_accuracy

    if target:
        _run(run_time_to_accuracy, tuple(target.split(",")), seeds=seeds, limit=limit,
             max_epochs=epochs, output=output or "benchmarks/results/time_to_accuracy",
             data_dir=data_dir, recipes=tuple((recipes or "lecture,fast").split(",")),
             budget=_float("budget", budget) if budget else 0.0)
        return
    if recipes or budget:
        raise Exit("error: --recipes and --budget go with --target, e.g. --target lecture,0.935 --budget 180", code=2)
    _run(run_benchmark, limit=limit, epochs=epochs, repeats=repeats,
         output=output or "benchmarks/results/latest", data_dir=data_dir,
         subjects=tuple(subjects.split(",")) if subjects else None, numerics_modes=tuple(numerics.split(",")))


@task(help={
    "run": "a finished run folder, e.g. runs/20261126-231502-fashion_mnist-sequential_add-fit",
    "runs_dir": "where the rerun's folder goes (default: beside the original)",
    "tolerance": "largest test loss/accuracy difference accepted on another kind of machine (default 0.02)",
})
def reproduce(c, run, runs_dir="", tolerance=""):
    """Re-run a finished run from its manifest and compare metrics and weights."""
    _quiet()
    from classifier.commands.reproduce import reproduce as reproduce_run

    limit = _float("tolerance", tolerance) if tolerance else None
    if not _run(reproduce_run, run, runs_dir=runs_dir, tolerance=limit):
        raise Exit(code=1)


@task(iterable=["more"], help={
    "run_a": "the reference run folder, e.g. the lecturer's runs/20261126-231502-fashion_mnist-sequential_add-fit",
    "run_b": "the run folder compared with it, e.g. a student's; or a zip of one, or a folder of students' run "
             "folders and zips (one table row each)",
    "more": "another run folder or zip judged against run_a in the same table (repeat: --more B.zip --more C.zip)",
    "tolerance": "largest test loss/accuracy difference accepted where bit-identical weights are not promised "
                 "(another kind of machine or other software; default 0.02)",
})
def compare(c, run_a, run_b, tolerance="", more=None):
    """Compare finished runs without retraining: IDENTICAL, WITHIN TOLERANCE or DIFFERENT (a class: one table)."""
    _quiet()
    from classifier.commands.compare import compare as compare_runs

    limit = _float("tolerance", tolerance) if tolerance else None
    code = _run(compare_runs, run_a, run_b, more, tolerance=limit)
    if code:
        raise Exit(code=code)


@task(help={
    "data_dir": _CONFIG_HELP["data_dir"],
    "runs_dir": "runs folder whose free disk space is checked (default: $CLASSIFIER_RUNS_DIR or ./runs)",
})
def doctor(c, data_dir="", runs_dir=""):
    """Check Python, TensorFlow, GPUs, Conv2D, graphviz, data, disk and Docker; say how to fix."""
    _quiet()
    from classifier import config as config_module
    from classifier.commands.doctor import diagnose, report

    config = _config(data_dir=data_dir, runs_dir=runs_dir)
    checks = _run(diagnose, config_module.data_dir(config), config_module.runs_dir(config))
    if not report(checks):
        raise Exit(code=1)


@task(help={
    "dataset": "the dataset whose image shape and classes the model is built for (default cifar10)",
    "model": _CONFIG_HELP["model"],
    "output": "picture file: .png, .svg, .pdf or .dot (default MODEL-DATASET.png)",
})
def plot(c, dataset=None, model=None, output=""):
    """Draw the model's picture with keras.utils.plot_model (needs graphviz)."""
    _quiet()
    from classifier.commands.plot import plot_command

    _run(plot_command, _config(dataset=dataset, model=model), output=output)


@task(help={
    "script": "a course script, e.g. detlec/01_classifiers/tf_classifier_basic.py after "
              "`git clone https://github.com/goodgodgd/detlec` here (run `invoke data` first)",
    "args": "arguments for the script, as one string",
})
def course(c, script, args=""):
    """Run one of the course's own scripts unchanged, offline (TensorFlow: legacy Keras 2; PyTorch: .venv-torch)."""
    _quiet()
    import shlex

    from classifier.commands.course import run_script

    try:
        words = tuple(shlex.split(args))
    except ValueError as error:  # e.g. an unclosed quote
        raise Exit(f"error: --args {args!r} cannot be split into words ({error}); quote it as a shell would",
                   code=2) from None
    status = _run(run_script, script, words)
    if status:
        raise Exit(code=status)


@task
def tensors(c):
    """Walk through TensorFlow tensor basics (lecture 1.1)."""
    _quiet()
    from classifier.lecture.tensors import demonstrate

    demonstrate()


@task(help={
    "markers": "pytest marker expression, e.g. 'not slow' (default: every test)",
    "args": "more arguments for pytest, e.g. '-x -k data'",
})
def test(c, markers="", args=""):
    """Run the test suite with pytest."""
    marker_flag = f"-m '{markers}'" if markers else ""
    result = c.run(f"{sys.executable} -m pytest {marker_flag} {args}", warn=True, pty=False)
    if result.exited:
        raise Exit(code=result.exited)


# The container, from the host (classifier/commands/container.py). Inside the
# container the tasks above train and test as they do on the host.
_VARIANT_HELP = "gpu (CUDA TensorFlow, default) or cpu (hosts without an NVIDIA runtime)"


@task(help={
    "variant": _VARIANT_HELP,
    "base_image": "build FROM this image instead of the pinned python:3.11 slim one (e.g. a local stand-in)",
    "network": "network for the build's apt-get and pip, e.g. host where the engine has no bridge network",
    "cache_from": "reuse the layers of this image, e.g. the class's published image after `docker pull`",
    "torch": "PyTorch beside TensorFlow, for notebook 04 and --trainer torch (default; --no-torch leaves it out)",
})
def build(c, variant="gpu", base_image="", network="", cache_from="", torch=True):
    """Build the lab image (classifier-lab:VARIANT) as your user's UID/GID."""
    from classifier.commands import container

    _run(container.build, variant, base_image=base_image or None, network=network or None,
         cache_from=cache_from or None, torch=torch)


@task(help={
    "variant": _VARIANT_HELP,
    "port": "JupyterLab's port on 127.0.0.1 (default 8888)",
    "tensorboard_port": "TensorBoard's port on 127.0.0.1 (default 6006)",
    "wait": "seconds to wait for JupyterLab to answer (default 300)",
})
def lab(c, variant="gpu", port=8888, tensorboard_port=6006, wait=300):
    """Start JupyterLab and TensorBoard from the built (or LAB_IMAGE) image; print the URL with its token."""
    from classifier.commands import container

    _run(container.lab_up, variant, port=port, tensorboard_port=tensorboard_port, wait=wait)


@task(help={
    "variant": "gpu or cpu (default: the one `invoke lab` last started)",
    "command": "run this bash command line in the container instead of an interactive shell",
})
def shell(c, variant="", command=""):
    """Open a shell (or run one command) in a fresh lab container."""
    from classifier.commands import container

    status = _run(container.shell, variant or None, command)
    if status:
        raise Exit(code=status)


@task(help={"variant": "the running lab's variant (default: the one `invoke lab` started)"})
def down(c, variant=""):
    """Stop the lab's containers (data/ and runs/ stay on the host)."""
    from classifier.commands import container

    _run(container.down, variant or None)


@task(help={"upgrade": "move every pin to the newest release allowed by pyproject.toml",
            "proof": "instead: resolve every lock for its platform (uv), then download its wheels, hashes checked "
                     "(about 2 GB)"})
def lock(c, upgrade=False, proof=False):
    """Regenerate the hash-locked requirements/*.lock from pyproject.toml (--proof: check them)."""
    from classifier.commands import container

    if proof:
        from classifier.machinery import platforms

        # uv first (seconds, markers judged for each platform), then pip's downloads (about 2 GB).
        failures = _run(platforms.prove_markers) + _run(platforms.prove)
        if failures:
            raise Exit(f"error: {len(failures)} lock(s) cannot be installed on their platform: {failures[0]}", code=1)
        return
    for path in _run(container.lock, upgrade=upgrade):
        print(f"wrote {path}")


@task(help={
    "run": "a finished run folder, e.g. runs/20261127-150831-fashion_mnist-sequential_add-fit",
    "format": "savedmodel, tflite, onnx, or several comma-separated (default: all three; a --trainer torch run: onnx)",
    "int8": "also write an int8-quantized TFLite and report its accuracy drop and size",
    "data_dir": _CONFIG_HELP["data_dir"],
})
def export(c, run, format="savedmodel,tflite,onnx", int8=False, data_dir=""):
    """Export a run's model (SavedModel, TFLite, ONNX; a torch run: ONNX), check each on the test set, write export.md."""
    _quiet()
    from classifier.commands.export import ExportMismatch, export_run
    from classifier.machinery.exporters import markdown_table

    try:
        result = _run(export_run, run, formats=format, int8=int8, data_dir=data_dir)
    except ExportMismatch as error:
        raise Exit(f"error: {error}", code=1) from None
    print(markdown_table(result), end="")
