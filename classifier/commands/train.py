"""`invoke train`: the lecture's chain, with the lab's run folder around it.

    gpu_config() -> load_dataset() -> create_model() -> train_model() -> test_model() -> record()

`train_command` settles the config once (a resumed run's own, or the recipe's)
and hands it to the trainer's chain: `train_keras` here for fit and tape,
train_torch.py for `--trainer torch`; `--workers N` goes to workers.py. The run
folder's lifecycle (claim, manifest, Ctrl-C, finish) is one helper both
frameworks use (classifier/machinery/lifecycle.py); several machines come in
through classifier/machinery/distribute.py. Each step raises UserError for bad
input, which tasks.py prints as one line with exit code 2.
"""

from __future__ import annotations

import pprint
from pathlib import Path

from classifier.config import Config, resolve_recipe
from classifier.machinery import numerics, report
from classifier.machinery.cluster import worker_role
from classifier.machinery.lifecycle import Run, epochs_saved, print_metrics, timings
from classifier.machinery.loading import load_dataset
from classifier.machinery.runs import environment_record, resume_target, running_manifest, save_keras_model


def train_command(config: Config, resume: str = "", given: frozenset[str] | None = None,
                  verbose: int | None = None) -> Path:
    """Train one model as `config` says (or continue the run folder `resume`) and write its run folder.

    Args:
        config: the run's settings.
        resume: a stopped run folder to continue; its config.json replaces `config`.
        given: the config keys the person set; a recipe never overrides them
            (None: every key counts as set, as for a config read back from a run).
        verbose: Keras' verbosity (default: a progress bar in a terminal, a line per epoch otherwise).

    Returns:
        The run folder.
    """
    resume_dir, config = settle_config(config, resume, given)
    if config.trainer == "torch":
        # The lecture's part 2: PyTorch's loop, the same run folder, no TensorFlow imported.
        from classifier.commands.train_torch import train_torch

        return train_torch(config, resume_dir)
    return train_keras(config, resume_dir, verbose)


def train_keras(config: Config, resume_dir: Path | None, verbose: int | None) -> Path:
    """The lecture's chain with the TensorFlow trainers (fit, tape) for a settled config; returns the run folder.

    Args:
        config: the settled config (settle_config), trainer "fit" or "tape".
        resume_dir: the stopped run folder to continue, or None.
        verbose: Keras' verbosity (None: a progress bar in a terminal, a line per epoch otherwise).
    """
    if config.strategy == "multiworker":
        worker_role()  # a missing or bad TF_CONFIG is one line, before TensorFlow loads
    # Before TensorFlow starts: it reads these settings once, when it is loaded.
    numerics_record = numerics.apply(config.numerics)
    # Imported here: after the numerics settings, and so that bad input above is reported without loading TensorFlow.
    from classifier.lecture.runtime import DurationTime, devices, seed_everything
    from classifier.machinery.checkpoints import readable_state
    from classifier.machinery.distribute import check_same_data, is_chief, make_strategy, start_devices

    strategy, gpus = start_devices(config)
    # A damaged checkpoint is refused (or passed over for the one before) before the run folder changes.
    resume_state = readable_state(resume_dir / "checkpoint") if resume_dir else None
    seed_everything(config.seed, config.deterministic)
    with DurationTime("load data") as load_timer:
        dataset, splits, hashes = load_dataset(config)
    strategy = strategy or make_strategy(config)
    check_same_data(strategy, hashes)
    # Only the chief writes the run folder; the other workers of a multi-worker
    # run write the same files into a scratch folder that is deleted at the end.
    run = Run.claim(config, resume_dir, chief=is_chief(strategy))
    run.start(running_manifest(config, dataset, splits, hashes, gpus=gpus, devices_used=devices(),
                               environment=environment_record(), numerics=numerics_record))
    # Ctrl-C or a full disk from here on, in any phase, leaves a run that --resume continues.
    with run.interruptible(lambda: epochs_saved(run.checkpoint_folder)):
        report.show_samples(splits[0].images, splits[0].labels, dataset.class_names, run.folder / "samples.png")
        model, optimizer = create_model(config, dataset, strategy, run, len(splits[0]))
        trained = train_model(config, run, (model, optimizer, resume_state), strategy, splits, dataset.image_shape,
                              verbose)
        final_model, metrics, eval_seconds = test_model(config, model, strategy, dataset, splits[2])
        seconds = {"load": load_timer.seconds, "train": trained["seconds"], "evaluate": eval_seconds}
        return record(run, trained, final_model, metrics, seconds, dataset.class_names, len(splits[0]))


def settle_config(config: Config, resume: str, given: frozenset[str] | None) -> tuple[Path | None, Config]:
    """(the run folder to continue or None, the config to train with): a resumed run's own, or the recipe's."""
    if resume:
        # A worker of a multi-worker run leaves the lock to its chief, which takes it when it claims the folder.
        return resume_target(Path(resume), check_lock=config.strategy != "multiworker")
    if config.trainer == "torch":
        return None, config
    config, chosen = resolve_recipe(config, given)
    if chosen:
        print(f"recipe {config.recipe} chose: " + ", ".join(f"{key}={value}" for key, value in chosen.items()))
    return None, config


def create_model(config: Config, dataset, strategy, run: Run, num_train: int):
    """create_model(): under the strategy's scope, so that its variables live on every replica."""
    from classifier.machinery.distribute import build_model_and_optimizer

    run.manifest["replicas"] = strategy.num_replicas_in_sync
    model, optimizer, run.manifest["precision"] = build_model_and_optimizer(
        config, dataset.image_shape, len(dataset.class_names), num_train, strategy)
    if run.manifest["precision"] != "float32":
        # The same command computes in float32 elsewhere, so say why this run does not.
        print(f"[recipe] precision {run.manifest['precision']}: this machine computes bfloat16 in hardware "
              "(a GPU, or a CPU with AMX or AVX-512 BF16; --numerics portable keeps float32)")
    model.summary()
    if why := report.graphviz_missing():
        print(f"warning: model.png skipped: {why}")
    else:
        report.plot_model(model, run.folder / "model.png")
    return model, optimizer


def train_model(config: Config, run: Run, built, strategy, splits, image_shape, verbose: int | None) -> dict:
    """train_model(): the lecture's trainer, checkpointed after every epoch; returns what record() needs.

    Args:
        built: (model, optimizer) from create_model, and the checkpoint state to resume from (None: none).
    """
    from classifier.lecture.runtime import DurationTime
    from classifier.machinery.checkpoints import Checkpoints
    from classifier.machinery.distribute import collective_failures, make_trainer
    from classifier.machinery.tensorboard import EpochSummaries

    model, optimizer, resume_state = built
    train, val, _ = splits
    checkpoints = Checkpoints(run.checkpoint_folder, model, optimizer, chief=run.chief)
    # TensorBoard's per-epoch scalars and graph come first, so the epoch timer in checkpoints leaves them out.
    # Only the chief writes them, as it writes the run folder.
    summaries = [EpochSummaries(run.folder, optimizer, image_shape)] if config.tensorboard and run.chief else []
    with strategy.scope():
        initial_epoch = checkpoints.restore(resume_state)
        trainer = make_trainer(config, model, optimizer, strategy, callbacks=[*summaries, checkpoints], verbose=verbose)
    if initial_epoch:
        print(f"Resuming {run.folder.name} after epoch {initial_epoch}/{config.epochs}")

    def epochs_done() -> int:
        return len(checkpoints.history["loss"])

    with collective_failures(config, run, epochs_done), DurationTime("training") as train_timer:
        trainer.train((train.images, train.labels), (val.images, val.labels), initial_epoch=initial_epoch)
    for summary in summaries:
        summary.close()
    history = checkpoints.history
    pprint.pprint({key: [round(value, 4) for value in values] for key, values in history.items()}, width=120)
    return {"checkpoints": checkpoints, "initial_epoch": initial_epoch, "seconds": train_timer.seconds,
            "tensorboard_seconds": summaries[0].seconds if summaries else None}


def test_model(config: Config, model, strategy, dataset, test):
    """test_model(): evaluate() and predict() for `fit`, calling the model for `tape` (lecture 1.3).

    Several workers call the model too: each evaluates the whole test set on
    its own, where Keras 3.15's evaluate() under the multi-worker strategy
    would report each worker's share of it.

    Returns:
        (the model that is evaluated and saved, the metrics, the seconds it took).
    """
    from classifier.lecture.evaluate import evaluate
    from classifier.lecture.runtime import DurationTime
    from classifier.machinery.recipes import inference_model

    with strategy.scope():
        final_model = inference_model(model, config)
    with DurationTime("evaluation") as eval_timer:
        metrics = evaluate(final_model, test, len(dataset.class_names), config.eval_batch_size,
                           direct=config.trainer == "tape" or final_model is not model
                           or config.strategy == "multiworker")
    print_metrics(metrics)
    return final_model, metrics, eval_timer.seconds


def record(run: Run, trained: dict, final_model, metrics: dict, seconds: dict, class_names,
           num_train: int) -> Path:
    """The run's evidence: model.keras, history, metrics, timings, pictures, the manifest (last)."""
    checkpoints = trained["checkpoints"]
    run_timings = timings(seconds, checkpoints.epoch_seconds, trained["initial_epoch"], num_train,
                          trained["tensorboard_seconds"])
    checkpoints.close()
    return run.finish({**checkpoints.history, "epoch_seconds": checkpoints.epoch_seconds}, metrics, run_timings,
                      class_names, save_keras_model(run.folder, final_model), tensorboard=run.config.tensorboard)
