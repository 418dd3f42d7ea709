"""Several processes around the lecture's PyTorch loop: `invoke train --trainer torch --workers N`.

    invoke train --trainer torch --dataset fashion_mnist --workers 2 --limit 6000 --epochs 2

The launcher is the TensorFlow one (classifier/commands/workers.py): N
processes on 127.0.0.1, each told by TF_CONFIG who is in the cluster and which
one it is. Here each joins a `torch.distributed` process group (gloo on the
CPU, NCCL when every worker has a GPU of its own) at worker 0's address, and
the lecture's `TorchTrainer` is wrapped, not rewritten:

    trainer = DistributedTorchTrainer(model, config, group)   # DistributedDataParallel around the model
    trainer.train(train, val)                                  # the lecture's loop, unchanged

`DistributedDataParallel` averages the gradients over the workers inside
`loss.backward()`, so every worker takes the same optimizer step. Each worker
reads its own share of every epoch through a `DistributedSampler`, reshuffled
per epoch by its `set_epoch`; the global batch (config.batch_size) is split
evenly between the workers. Worker 0 writes the run folder; the others write
theirs into a scratch folder (lifecycle.Run, chief=False). The loss and
accuracy in history.json are worker 0's share of each epoch; validation and
test metrics cover every image (each worker holds the same weights).
"""

from __future__ import annotations

import contextlib
import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from classifier.config import Config, UserError
from classifier.lecture.torch_train import TorchTrainer, to_tensors
from classifier.machinery.cluster import check_batch_split, chief_address, worker_role
from classifier.machinery.runs import resume_command

# How long a worker waits for the others to join, or in a gradient exchange,
# before it gives up. A worker that was killed is noticed at once (its
# connection closes); this bounds a worker that hangs without dying.
TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class Group:
    """This process's place in the process group: how many workers, which one, the backend, its device."""

    world_size: int
    rank: int
    backend: str  # "gloo" or "nccl"
    device: torch.device

    @property
    def chief(self) -> bool:
        return self.rank == 0


def join_group(config: Config) -> Group:
    """Join the workers that TF_CONFIG names (worker 0 listens at its address); returns this process's Group.

    Raises:
        UserError: TF_CONFIG is missing or bad, or the global batch does not split evenly between the workers.
    """
    world_size, rank = worker_role()
    check_batch_split(config.batch_size, world_size)
    # NCCL needs a GPU per worker; with fewer GPUs than workers, gloo works on any tensor.
    gpus = torch.cuda.device_count()
    backend = "nccl" if gpus >= world_size else "gloo"
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"tcp://{chief_address()}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=TIMEOUT_SECONDS))
    print(f"[torch.distributed] worker {rank} of {world_size}, backend {backend}, device {device}", flush=True)
    return Group(world_size, rank, backend, device)


def leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class DistributedTorchTrainer(TorchTrainer):
    """The lecture's TorchTrainer, one per worker: DistributedDataParallel around the model, a DistributedSampler."""

    def __init__(self, model, config: Config, group: Group, verbose: bool = True):
        super().__init__(model, config, device=group.device, verbose=verbose)
        self.group = group
        # Every worker starts from worker 0's weights (DDP broadcasts them) and
        # takes the same averaged step; the optimizer holds the same parameters.
        self.model = DistributedDataParallel(self.model, device_ids=[group.device.index] if group.backend == "nccl" else None)
        self.first_epoch = 0

    def train(self, train, val, start_epoch: int = 0, on_epoch_end=None):
        """The lecture's `train`, its loader reshuffled from `start_epoch` on (see `make_loader`)."""
        self.first_epoch = start_epoch
        return super().train(train, val, start_epoch=start_epoch, on_epoch_end=on_epoch_end)

    def make_loader(self, split):
        """This worker's share of the training split, batch_size / world_size images a batch."""
        dataset = TensorDataset(*to_tensors(split))
        sampler = DistributedSampler(dataset, num_replicas=self.group.world_size, rank=self.group.rank,
                                     shuffle=True, seed=self.config.seed)
        loader = DataLoader(dataset, batch_size=self.config.batch_size // self.group.world_size, sampler=sampler,
                            generator=self.generator, pin_memory=self.device.type == "cuda")
        return EpochLoader(loader, sampler, self.first_epoch)


class EpochLoader:
    """A DataLoader whose DistributedSampler gets `set_epoch` before each pass, as torch's docs ask.

    Without it every epoch would see the same order. The epoch number counts
    from the first epoch this process trains, so a resumed run shuffles as
    the uninterrupted one did.
    """

    def __init__(self, loader: DataLoader, sampler: DistributedSampler, first_epoch: int):
        self.loader = loader
        self.sampler = sampler
        self.epoch = first_epoch

    def __iter__(self):
        self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


@contextlib.contextmanager
def lost_workers(config: Config, run, epochs_done):
    """Around distributed training: a worker that died or hangs becomes one line saying how to resume.

    The run (a lifecycle.Run) is marked interrupted; its checkpoint keeps the last finished epoch.
    """
    try:
        yield
    except RuntimeError as error:
        if not _lost_a_worker(error):
            raise
        run.stopped()
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise UserError(f"a worker stopped or cannot be reached ({first[:120]}) after {epochs_done()}/{config.epochs} "
                        f"epoch(s); continue with: {resume_command(run.home, 'N')}") from None


def _lost_a_worker(error: RuntimeError) -> bool:
    """Whether `error` says that a collective lost another worker, rather than being a bug of its own.

    NCCL's and the store's failures are torch.distributed.DistError; gloo's
    come as a plain RuntimeError from its transport (measured with torch 2.13:
    "gloo/transport/tcp/pair.cc:537] Read error ...: Connection reset by peer").
    """
    text = str(error)
    return isinstance(error, dist.DistError) or "gloo/transport" in text or "Timed out" in text
