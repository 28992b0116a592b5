"""Data-parallel training under ``torchrun``: one process per device, each on its rows of every batch.

    torchrun --standalone --nproc-per-node 2 -m mlp_torch train ...

The gradient of the lecture's loss is a mean over the batch, with weights ``w_n`` (1, or the class
weight ``w_{y_n}`` of ``--balance weights``)::

    ∇L = Σ_n w_n ∇ℓ_n / Σ_n w_n

Cut the batch into the processes' shards ``r``. Each process's ``compute_gradients`` leaves its
shard's mean ``g_r = Σ_{n∈r} w_n ∇ℓ_n / W_r`` in ``.grad``, with ``W_r = Σ_{n∈r} w_n``, so::

    ∇L = Σ_r W_r g_r / Σ_r W_r

Every process multiplies its ``.grad`` by ``W_r``, one all-reduce sums the products and the
``W_r``, and every process divides by the sum ``W``. With equal shards this is the plain mean of
the ``g_r``; the last batch of an epoch, a batch the process count does not divide, a shard left
empty (``W_r = 0``) and class weights all make the shards unequal.

Why not ``DistributedDataParallel``: DDP averages gradients over the processes in hooks that
autograd fires during ``backward``. The ``manual`` path never touches autograd, so the hooks would
never fire and each process would silently train on its own shard; and a plain average by the
number of processes is wrong whenever the shards are unequal. One all-reduce of ``.grad`` after
``compute_gradients`` serves builtin, custom and manual alike, weighs the shards exactly, and
carries the step's statistics and every process's stop request in the same buffer: one collective
per step. (What DDP would add, overlapping the all-reduce with backward, buys little for a few
dense layers.)

Everything else follows from "every process holds the same numbers": the same seed and generator
give the same initial parameters (broadcast from rank 0 all the same), sample order and
augmentation (drawn for the whole batch, :class:`~mlp_torch.data.DeviceBatches`); the same reduced
gradient gives the same step everywhere; the step's loss, accuracy and gradient norms are the
whole batch's, and validation and test are sharded with their sums reduced, so every process
agrees on the best epoch and on stopping. The checkpoint is therefore the same whichever process
would write it, and a run resumes with any number of processes.

Rank 0 alone writes the run directory (checkpoints, TensorBoard, ``metrics.json``) and speaks on
the console: the others' standard output and error go to ``os.devnull`` while they train, and the
command line prints only rank 0's errors. Every collective times out after ``--dist-timeout``; a
process that dies is noticed at once (its connections close), one that hangs after the timeout,
and either way the others stop with one line (:class:`~mlp_torch.errors.LostContactError`). That
is gloo, on the CPU. nccl's collectives are asynchronous: the call returns at once and a timeout
surfaces in NCCL's watchdog, which ends the process with its own message (``torchrun`` then
stops the others), not here.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..data import Preprocessor
from ..errors import LostContactError, MlpTorchError, UsageError
from ..models import Classifier
from ..utils import select_device
from .evaluation import EvalResult, evaluate, evaluation_result, evaluation_sums

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """The processes training one run: this one is ``rank`` of ``size``. ``World()`` is a process alone.

    Its methods are the only collectives training uses; with ``size == 1`` they do no communication.
    """

    rank: int = 0
    size: int = 1
    timeout: float = 0.0  # seconds, for the messages

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run's files and speaks on the console."""
        return self.rank == 0

    # ------------------------------------------------------------------ collectives

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over the processes, in place; every process gets the same numbers."""
        if self.size > 1:
            self._collective(dist.all_reduce, tensor)
        return tensor

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` (any picklable object), on every process."""
        if self.size == 1:
            return value
        box = [value]
        self._collective(dist.broadcast_object_list, box, src=0)
        return box[0]

    def broadcast_parameters(self, model: nn.Module) -> None:
        """Make every process's parameters and buffers rank 0's (they already are: the same seed made them)."""
        if self.size > 1:
            for tensor in model.state_dict().values():
                self._collective(dist.broadcast, tensor, src=0)

    def all_reduce_gradients(
        self, params: Iterable[nn.Parameter], weight: Tensor, extras: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Make every ``.grad`` the whole batch's gradient ``Σ_r W_r g_r / Σ_r W_r``, in one all-reduce.

        The full-batch gradient is the weighted mean of the shards' gradients (the module's
        docstring derives it). ``manual`` computes its gradients without autograd, so no autograd
        hook (``DistributedDataParallel``'s) would ever see them: this explicit all-reduce of
        ``.grad`` serves it, and builtin and custom alike.

        Args:
            params: the model's parameters; each ``.grad`` holds this process's shard mean ``g_r``.
            weight: ``W_r``, the shard's total weight (its row count, or ``Σ w_{y_n}``; 0 for an
                empty shard), a 0-dim tensor of the gradients' dtype.
            extras: more numbers to sum over the processes in the same collective (1-D, same dtype).

        Returns:
            ``W = Σ_r W_r`` and the summed ``extras``.
        """
        params = list(params)
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        flat = torch.cat([*(g.reshape(-1) * weight for g in grads), weight.reshape(1), extras])  # Σ W_r g_r, W_r, …
        self.all_reduce_sum(flat)
        *summed, total, extras_sum = flat.split([p.numel() for p in params] + [1, len(extras)])
        for p, s in zip(params, summed):
            p.grad = (s / total).view_as(p)  # Σ_r W_r g_r / W
        return total[0], extras_sum

    # ------------------------------------------------------------------ work on some processes, errors on all

    def on_main(self, work: Callable[[], T]) -> T:
        """Run ``work`` on rank 0 alone and give every process its result (picklable, small).

        An :class:`MlpTorchError` it raises is raised on every process, so that all stop alike.
        """
        if self.size == 1:
            return work()
        result, error = attempt(work) if self.is_main else (None, None)
        shared = self.broadcast(error or result)
        if isinstance(shared, MlpTorchError):
            raise shared
        return cast(T, shared)

    def everywhere(self, work: Callable[[], T]) -> T:
        """Run ``work`` on every process; if it raises an :class:`MlpTorchError` on any, raise it on all."""
        result, error = attempt(work)
        self._raise_any(error)
        return cast(T, result)  # no error: work returned

    def main_first(self, work: Callable[[], T]) -> T:
        """Run ``work`` on rank 0, then on the others: preparing data, they find the download and cache done.

        An :class:`MlpTorchError` on any process is raised on all.
        """
        result, error = attempt(work) if self.is_main else (None, None)
        self._raise_any(error)  # the others wait here for rank 0
        if not self.is_main:
            result, error = attempt(work)
        self._raise_any(error)
        return cast(T, result)

    def _raise_any(self, error: MlpTorchError | None) -> None:
        """Raise, on every process, the error of the lowest rank that had one."""
        if self.size == 1:
            if error is not None:
                raise error
            return
        errors: list[Any] = [None] * self.size
        self._collective(dist.all_gather_object, errors, error)
        for rank, err in enumerate(errors):
            if err is not None:
                if rank == self.rank:
                    raise err
                raise type(err)(f"rank {rank}: {err}" if rank else str(err))

    def _collective(self, op: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        """Run one collective; a peer that died or hung becomes one line, :class:`LostContactError`."""
        try:
            op(*args, **kwargs)
        except RuntimeError as err:  # gloo raises plain RuntimeErrors; nccl's DistBackendError is one too
            raise LostContactError(
                f"rank {self.rank} of {self.size} lost contact with the other processes of this run "
                f"({backend_message(err)}): one of them failed, was killed, or hung for longer than "
                f"--dist-timeout {self.timeout:g} s; its own output says which. The checkpoints saved "
                "before are intact"
            ) from None


def attempt(work: Callable[[], T]) -> tuple[T | None, MlpTorchError | None]:
    """``(work(), None)``, or ``(None, error)`` if it raised an expected error; anything else goes on up."""
    try:
        return work(), None
    except MlpTorchError as err:
        return None, err


def evaluate_sharded(world: World, model: Classifier, x: Tensor, y: Tensor, standardizer: Preprocessor) -> EvalResult:
    """:func:`~mlp_torch.training.evaluate` of the whole split: each process its rows, the sums reduced.

    The loss sum and the confusion matrix add up over the shards, so every process gets the same
    result (and the confusion matrix, the accuracies and the best epoch are those of one process).
    """
    if world.size == 1:
        return evaluate(model, x, y, standardizer)
    mine = x.tensor_split(world.size)[world.rank], y.tensor_split(world.size)[world.rank]
    loss_sum, confusion = evaluation_sums(model, *mine, standardizer)
    sums = world.all_reduce_sum(torch.cat([loss_sum.reshape(1), confusion.reshape(-1).double()]))
    return evaluation_result(sums[0], sums[1:].round().long().view_as(confusion))


# --------------------------------------------------------------------------- joining the processes


@contextlib.contextmanager
def join_processes(device: str, timeout: float) -> Iterator[tuple[World, torch.device]]:
    """The processes ``torchrun`` started for this run, in one process group, and this one's device.

    ``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (and where to meet); without them
    (or with ``WORLD_SIZE=1``) the process is alone: ``World()`` and :func:`select_device`. The
    backend follows the device: nccl for CUDA, each process on ``cuda:LOCAL_RANK``; gloo on the
    CPU. A process group the caller initialised already is used as it is and left open.
    On ranks other than 0, standard output and error go to ``os.devnull`` inside the block.

    Args:
        device: ``--device``.
        timeout: ``--dist-timeout``, seconds, for every collective (and for meeting at the start).

    Raises:
        UsageError: a device that several processes cannot share, or a launch without torchrun's variables.
        LostContactError: the other processes did not all arrive within ``timeout``.
    """
    joined = dist.is_available() and dist.is_initialized()
    size = dist.get_world_size() if joined else _env_int("WORLD_SIZE", 1)
    if size == 1:
        yield World(), select_device(device)
        return
    if not dist.is_available():
        raise UsageError(f"WORLD_SIZE={size}, but this PyTorch has no torch.distributed; run one process")
    rank = dist.get_rank() if joined else _env_int("RANK", -1)
    if not 0 <= rank < size:
        raise UsageError(f"WORLD_SIZE={size} needs a RANK from 0 to {size - 1}; start the processes with torchrun")
    chosen = process_device(device, _env_int("LOCAL_RANK", rank))
    world = World(rank, size, timeout)
    if not joined:
        try:
            dist.init_process_group(
                "nccl" if chosen.type == "cuda" else "gloo",
                timeout=timedelta(seconds=timeout),
                device_id=chosen if chosen.type == "cuda" else None,
            )
        except ValueError as err:  # env:// without MASTER_ADDR or MASTER_PORT
            raise UsageError(f"WORLD_SIZE={size} is set, but {err}; start the processes with torchrun") from None
        except RuntimeError as err:
            raise LostContactError(
                f"rank {rank} of {size} could not meet the other processes within --dist-timeout {timeout:g} s "
                f"({backend_message(err)})"
            ) from None
    try:
        with quiet_unless_main(world):
            yield world, chosen
    finally:
        if not joined:
            dist.destroy_process_group()


def process_device(name: str, local_rank: int) -> torch.device:
    """The device of the process with this ``LOCAL_RANK``: ``cuda:LOCAL_RANK`` (``auto`` or ``cuda``), or the CPU.

    Raises:
        UsageError: MPS (no torch.distributed backend), ``cuda:N`` (each process takes its own),
            or more processes on this machine than GPUs.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = select_device(name)
    if device.type == "mps":
        raise UsageError("--device mps: torch.distributed has no backend for MPS; pass --device cpu")
    if device.type == "cuda":
        if device.index is not None:
            raise UsageError(f"--device {name}: under torchrun each process takes cuda:LOCAL_RANK; pass --device cuda")
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise UsageError(
                f"LOCAL_RANK {local_rank}, but this machine has {count} GPU(s): start at most {count} "
                "processes on it (--nproc-per-node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def quiet_unless_main(world: World) -> Iterator[None]:
    """Inside the block, a process other than rank 0 writes nothing to the console: rank 0 speaks for the run."""
    if world.is_main:
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        yield


def backend_message(err: BaseException) -> str:
    """The gist of a gloo or nccl error: its first sentence, without the source location it starts with."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
    return text.split(". ")[0].rstrip(".")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if not value.isdigit():
        raise UsageError(f"the environment variable {name}={value!r} must be a whole number (torchrun sets it)")
    return int(value)
