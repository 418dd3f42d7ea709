"""The lecture's PyTorch trainer (part 2 of the week): a DataLoader and an explicit loop.

    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=...)
    for epoch in range(epochs):
        for x_batch, y_batch in loader:
            optimizer.zero_grad()
            loss = loss_object(model(x_batch), y_batch)
            loss.backward()
            optimizer.step()
        evaluate(x_val, y_val)            # validation after every epoch

RMSprop with lr 0.001 and `nn.CrossEntropyLoss`, as the lecture's script.
The images are channels-first and scaled to [-1, 1] (`to_tensors`).

Deterministic by default (`seed_torch`): Python, NumPy and torch are seeded,
`torch.use_deterministic_algorithms(True)` refuses kernels that could add up
in another order, `CUBLAS_WORKSPACE_CONFIG` makes cuBLAS repeat on a GPU, the
DataLoader shuffles with its own seeded `torch.Generator` (worker processes,
if any, are seeded from it), and validation never draws from the random
stream that training's dropout uses. A checkpoint is one dict (weights,
optimizer, every RNG state, epochs done, history) written atomically after
every epoch, so a run killed at any moment continues bit-identically:

    trainer = TorchTrainer(model, config)
    trainer.train(train, val, on_epoch_end=lambda epoch, t: save_checkpoint(path, t))
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn, optim
from torch.utils.data import DataLoader, TensorDataset

from classifier.config import Config, UserError
from classifier.data import Split
from classifier.files import atomic_write
from classifier.torch_models import outputs_probabilities

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")

# cuBLAS picks its reduction order by workspace; a fixed workspace makes GPU
# matrix products repeat (NVIDIA's cuBLAS notes; torch refuses to run them in
# deterministic mode without it). Read when CUDA starts, so set on import.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def seed_torch(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (every device), and ask torch for deterministic kernels.

    Args:
        seed: the run's seed.
        deterministic: refuse kernels that may add up in a different order
            from run to run (torch raises if an op has no deterministic one).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds the CPU and every CUDA device
    torch.use_deterministic_algorithms(deterministic)
    # cuDNN's autotuner times kernels and keeps the fastest: another pick on another run.
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = deterministic


def seed_worker(worker_id: int) -> None:
    """Seed NumPy and Python in a DataLoader worker from the seed torch gave it.

    torch seeds each worker from the loader's generator; NumPy and `random`
    would otherwise start from the parent's state in every worker.
    """
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def pick_device() -> torch.device:
    """The first GPU when torch sees one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_tensors(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """A split as the lecture feeds PyTorch: (N, C, H, W) float32 in [-1, 1], int64 labels.

    Args:
        split: NHWC float32 images in [0, 1] and int labels, from `classifier.data.prepare`.

    Returns:
        (images, labels) tensors.
    """
    # PyTorch's layers take channels first: (batch, channel, height, width).
    images = np.ascontiguousarray(np.transpose(split.images, (0, 3, 1, 2)))
    images = torch.from_numpy(images) * 2.0 - 1.0  # [0, 1] -> [-1, 1], as Normalize(0.5, 0.5)
    return images, torch.from_numpy(np.asarray(split.labels, dtype=np.int64))


class TorchTrainer:
    """The lecture's TorchClassifier: model, loss, optimizer, batch size; train and evaluate.

    Args:
        model: a module from `classifier.torch_models`.
        config: batch_size, learning_rate, epochs, seed and eval_batch_size are used.
        device: where to train (default: `pick_device()`).
        num_workers: DataLoader worker processes. 0 (default) loads in the
            training process: the images are already tensors in memory, and on
            a 2-core machine the lecture's 2 workers only add copying between processes.
        verbose: print one line per epoch.
    """

    def __init__(self, model: nn.Module, config: Config, device: torch.device | None = None,
                 num_workers: int = 0, verbose: bool = True):
        self.config = config
        self.device = device or pick_device()
        self.model = model.to(self.device)
        self.loss_object = nn.CrossEntropyLoss()
        self.optimizer = optim.RMSprop(self.model.parameters(), lr=config.learning_rate)
        # The loader's own RNG: the data order depends on it alone, and its
        # state goes into the checkpoint.
        self.generator = torch.Generator().manual_seed(config.seed)
        self.num_workers = num_workers
        self.verbose = verbose
        self.history: dict[str, list[float]] = {key: [] for key in HISTORY_KEYS}
        self.epoch_seconds: list[float] = []

    def make_loader(self, split: Split) -> DataLoader:
        """The shuffled DataLoader over a training split (batch_size from the config)."""
        return DataLoader(TensorDataset(*to_tensors(split)), batch_size=self.config.batch_size, shuffle=True,
                          generator=self.generator, num_workers=self.num_workers, worker_init_fn=seed_worker,
                          pin_memory=self.device.type == "cuda")

    def train(self, train: Split, val: Split, start_epoch: int = 0,
              on_epoch_end: Callable[[int, "TorchTrainer"], None] | None = None) -> dict[str, list[float]]:
        """Train from `start_epoch` to `config.epochs`, validating after every epoch.

        Args:
            train: the training split.
            val: the validation split.
            start_epoch: epochs already done (after `load_checkpoint`).
            on_epoch_end: called with (epoch index, trainer) after each epoch's validation.

        Returns:
            The history: per-epoch loss, accuracy, val_loss, val_accuracy.
        """
        loader = self.make_loader(train)
        val_images, val_labels = to_tensors(val)
        for epoch in range(start_epoch, self.config.epochs):
            start = time.perf_counter()
            self.model.train()
            total_loss, correct, seen = 0.0, 0, 0
            for x_batch, y_batch in loader:
                loss, outputs = self.train_batch(x_batch.to(self.device), y_batch.to(self.device))
                total_loss += loss.item() * len(y_batch)
                correct += (outputs.argmax(dim=1).cpu() == y_batch).sum().item()
                seen += len(y_batch)
            val_loss, val_accuracy = self.evaluate(val_images, val_labels)
            self.epoch_seconds.append(time.perf_counter() - start)
            for key, value in zip(HISTORY_KEYS, (total_loss / seen, correct / seen, val_loss, val_accuracy)):
                self.history[key].append(float(value))
            if self.verbose:
                print(f"[Training] epoch={epoch + 1}/{self.config.epochs}, loss={total_loss / seen:1.4f}, "
                      f"val_loss={val_loss:1.4f}, val_accuracy={val_accuracy:1.4f}, {self.epoch_seconds[-1]:.1f} s",
                      flush=True)
            if on_epoch_end:
                on_epoch_end(epoch, self)
        return self.history

    def train_batch(self, x_batch: torch.Tensor, y_batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: zero the gradients, forward, loss, backward, optimizer step."""
        self.optimizer.zero_grad()
        y_pred = self.model(x_batch)
        loss = self.loss_object(y_pred, y_batch)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), y_pred.detach()

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        """The lecture's evaluate: call the model, the loss object on its output, accuracy by hand."""
        # The lecture-faithful model drops out here too. On a forked RNG its draws
        # leave training's stream as it was, so the corrected and the faithful
        # model see the same dropout masks in training, and the notebook's plain
        # loop (whose corrected model draws nothing here) gives the same weights.
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            outputs = predict(self.model, images, self.config.eval_batch_size, self.device)
        loss = self.loss_object(outputs, labels).item()
        accuracy = torch.mean((torch.argmax(outputs, dim=1) == labels).float()).item()
        return loss, accuracy


def predict(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device | None = None) -> torch.Tensor:
    """The model's outputs for `images` (on the CPU), called in batches under `torch.no_grad()`.

    `model.eval()` turns off `nn.Dropout` and `F.dropout(..., training=self.training)`,
    but not the lecture's `F.dropout(x)`.
    """
    device = device or next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        outputs = [model(images[start:start + batch_size].to(device)).cpu()
                   for start in range(0, len(images), batch_size)]
    return torch.cat(outputs)


def evaluate_torch(model: nn.Module, split: Split, num_classes: int, batch_size: int = 256) -> dict:
    """Test metrics with the lecture's cross-checks, in the same keys as `classifier.evaluate`.

    The model is called twice, as the Keras path calls evaluate() and then
    predict(): the first call gives the loss (the lecture's CrossEntropyLoss on
    the model's output) and the accuracy by hand; the second the probabilities
    (softmax of the logits, or the output itself for the lecture-faithful
    build), their argmax accuracy, per-class accuracy and confusion matrix. A
    model whose dropout stays on at evaluation gives two different accuracies.

    Returns:
        {"loss", "accuracy", "argmax_accuracy", "cross_entropy", "probabilities_sum_to_one",
         "per_class_accuracy", "confusion_matrix", "num_images"}; "cross_entropy" is
        the mean -log p(true class) of the probabilities, the loss that means the same
        for both builds.
    """
    images, labels = to_tensors(split)
    outputs = predict(model, images, batch_size)
    loss = nn.CrossEntropyLoss()(outputs, labels).item()
    accuracy = torch.mean((torch.argmax(outputs, dim=1) == labels).float()).item()

    outputs = predict(model, images, batch_size)
    probabilities = outputs if outputs_probabilities(model) else torch.softmax(outputs, dim=1)
    probabilities = probabilities.double().numpy()
    predicted = probabilities.argmax(axis=1)
    true = labels.numpy()
    matrix = np.bincount(true * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)
    totals = matrix.sum(axis=1)
    per_class = np.divide(np.diag(matrix), totals, out=np.zeros(num_classes), where=totals > 0)
    picked = np.clip(probabilities[np.arange(len(true)), true], 1e-12, None)
    return {
        "loss": loss,
        "accuracy": accuracy,
        "argmax_accuracy": float(np.mean(predicted == true)),
        "cross_entropy": float(-np.mean(np.log(picked))),
        "probabilities_sum_to_one": bool(np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)),
        "per_class_accuracy": [float(value) for value in per_class],
        "confusion_matrix": matrix.tolist(),
        "num_images": int(len(true)),
    }


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over every tensor of the state dict, in order: equal hashes mean bit-identical weights."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def checkpoint_dict(trainer: TorchTrainer) -> dict:
    """Everything the next epoch needs, in one dict (nanoGPT's checkpoint shape)."""
    return {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "rng": {
            "loader": trainer.generator.get_state(),
            "torch": torch.get_rng_state(),  # dropout masks on the CPU
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        },
        "epochs_done": len(trainer.history["loss"]),
        "history": trainer.history,
        "epoch_seconds": trainer.epoch_seconds,
    }


def save_checkpoint(path: Path, trainer: TorchTrainer) -> Path:
    """Write `checkpoint_dict(trainer)` to `path` atomically (files.atomic_write: temporary name, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as temporary:
        # torch.save writing to a file reports a full disk as RuntimeError
        # "[enforce fail at inline_container.cc...]"; Python's write gives
        # OSError ENOSPC, which atomic_write names (files.DiskFull).
        temporary.write_bytes(to_bytes(checkpoint_dict(trainer)))
    return path


def to_bytes(value) -> bytes:
    """`value` as torch.save writes it."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def epochs_saved(path: Path) -> int | None:
    """The epochs the checkpoint at `path` holds: 0 without one, None when it cannot be read."""
    if not Path(path).exists():
        return 0
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["epochs_done"])
    except Exception:  # noqa: BLE001 - any damage means "not known"; the caller only reports it
        return None


def read_checkpoint(path: Path) -> dict | None:
    """The checkpoint dict at `path`, None when there is none (killed before the first epoch ended).

    Raises:
        UserError: the file is damaged (torch keeps one checkpoint, so there is none to fall back to).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        # weights_only=False: the dict holds NumPy's and Python's RNG states, and
        # it is a file this lab wrote into its own run folder.
        state = torch.load(path, map_location="cpu", weights_only=False)
        int(state["epochs_done"])
        return state
    except Exception:  # noqa: BLE001 - torch.load fails in many ways on a damaged file; all mean the same
        raise UserError(f"the checkpoint {path} is damaged, so this run cannot continue; start a new run with "
                        f"the settings in {path.parent.parent / 'config.json'}") from None


def load_checkpoint(path: Path, trainer: TorchTrainer, state: dict | None = None) -> int:
    """Restore a checkpoint into `trainer`; returns the number of epochs it had finished (0 if none).

    Args:
        path: the checkpoint file.
        trainer: the trainer to fill.
        state: the checkpoint as `read_checkpoint(path)` already read it (default: read it now).

    Raises:
        UserError: a damaged file, or a checkpoint of another model (an edited config.json).
    """
    state = read_checkpoint(path) if state is None else state
    if state is None:
        return 0  # killed before the first epoch ended: start again from the seed
    try:
        trainer.model.load_state_dict(state["model"])
    except RuntimeError:
        raise UserError(f"the checkpoint {path} does not fit this run's model; was its config.json edited? "
                        "Put it back as the run wrote it, or start a new run") from None
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.generator.set_state(state["rng"]["loader"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    trainer.history = state["history"]
    trainer.epoch_seconds = state["epoch_seconds"]
    return int(state["epochs_done"])
