"""``train(config) -> metrics``: the lecture's SGD loop, made safe to leave running.

    with start_run(config, resume) as state:            # data, model, optimizer, run directory, lock
        fit(state, CallbackList(default_callbacks(state)))

:func:`fit` runs the epochs: :func:`~mlp_torch.training.loop.train_one_epoch`, then validation
(:func:`~mlp_torch.training.loop.finish_epoch`), with the callbacks of
:mod:`mlp_torch.training.callbacks` around them (console, TensorBoard, checkpoints,
``metrics.json``, signals, gradient checks). At the end the best checkpoint is evaluated once on
the test split. Without a validation split (``--val-fraction 0``, or too few images for any to
be held out) the last epoch's model is kept as the best one, and the run says so.

Safety:

* a non-finite loss or gradient, or an update that overflows float32, stops training before the
  optimizer steps (every saved checkpoint stays as it was), writes ``metrics.json`` and raises
  :class:`DivergenceError`;
* SIGINT/SIGTERM/SIGHUP finish the current step, save ``last.pt`` with the position inside the
  epoch, and return ``status="interrupted"``; a second signal aborts at once (checkpoints are atomic);
* a file that cannot be written (a full disk, a file-size limit) raises :class:`WriteError` naming
  it, after ``metrics.json`` says ``status: "failed"`` where the disk still allows; the checkpoints
  saved before stay intact;
* ``resume`` restores model, optimizer, scheduler, every random generator and the position in the
  epoch, so a resumed run on the CPU ends with the same parameters, bit for bit. It refuses data
  that changed since the checkpoint and a run that another process is training (a lock), and
  removes the temporary files a killed save left behind.

Under ``torchrun`` every process runs all of this on its rows of each batch
(:mod:`mlp_torch.training.distributed`); rank 0 alone checks and locks the run directory, reads
and writes its files and prints, and the others learn what they need from it (the run directory,
the checkpoint to resume) or fail with it.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from ..data import (
    DataBundle,
    DeviceBatches,
    Preprocessor,
    Standardizer,
    Whitener,
    balance_weights,
    describe_data_change,
    fit_preprocessor,
    load_data,
    preprocessor_from_state,
)
from ..errors import DataError, UsageError, WriteError
from ..models import build_model
from ..utils import DTYPES, set_seed
from .callbacks import StopAfterEpochs, default_callbacks
from .checkpoint import load_checkpoint
from .config import TrainConfig
from .distributed import World, evaluate_sharded, join_processes
from .loop import Callback, CallbackList, choose_gradient_step, finish_epoch, start_epoch, train_one_epoch
from .resume import check_same_data, load_run_config, note, open_for_resume, record_resumed_config
from .rundir import RunLock, check_runs_dir, device_name, make_run_dir, nan_to_none, versions, write_json
from .schedule import build_optimizer, build_scheduler
from .state import TrainState

__all__ = ["fit", "load_run_config", "make_run_dir", "start_run", "train"]


def train(
    config: TrainConfig,
    resume: Path | None = None,
    stop_after_epochs: int | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train a model as ``config`` says; return the metrics also written to ``metrics.json``.

    Args:
        config: the full run configuration.
        resume: a run directory to continue from its ``checkpoints/last.pt``; ``config`` must be
            that run's (see :func:`load_run_config`), possibly with another ``epochs`` (at least
            the epochs done): the learning-rate schedule is rebuilt for the new total (see
            :mod:`mlp_torch.training.schedule`) and ``config.json`` records it.
        stop_after_epochs: stop (as if interrupted) once this many epochs are complete.
        callbacks: more callbacks, run after the default ones for every event.

    Returns:
        ``metrics`` with ``status`` = ``completed`` or ``interrupted``.

    Raises:
        DivergenceError: the loss or a gradient became non-finite (``metrics.json`` says where).
        WriteError: a checkpoint, ``metrics.json`` or the TensorBoard log could not be written.
        RunInUseError: another process is training ``resume``.
        DataError: the data changed since ``resume`` was saved.
    """
    with start_run(config, resume) as state:
        more = [*callbacks] + ([] if stop_after_epochs is None else [StopAfterEpochs(stop_after_epochs)])
        return fit(state, CallbackList([*default_callbacks(state, writers=state.world.is_main), *more]))


def fit(state: TrainState, callbacks: Callback) -> dict[str, Any]:
    """Train the epochs left, with ``callbacks`` around the loop; evaluate the best model on test once done.

    Returns:
        the final metrics (``metrics.json`` holds the same where the callbacks write it).
    """
    try:
        callbacks.on_train_start(state)
        while not state.completed and not state.should_stop:
            start_epoch(state)
            callbacks.on_epoch_start(state)
            started = time.perf_counter()
            try:
                finished = train_one_epoch(state, callbacks)
            finally:  # counted also when the epoch ends in a divergence
                state.train_seconds += time.perf_counter() - started
            if not finished:
                break
            finish_epoch(state)
            callbacks.on_epoch_end(state)
        if state.completed:
            outcome = {"status": "completed", **evaluate_best_on_test(state)}
        else:
            outcome = {"status": "interrupted", "signal": state.signal}
        state.final_metrics = nan_to_none(state.metrics(**outcome))  # as JSON has it: no NaN
        callbacks.on_train_end(state)
    except BaseException as err:
        callbacks.on_failure(state, err)
        raise
    return state.final_metrics


def evaluate_best_on_test(state: TrainState) -> dict[str, Any]:
    """Evaluate the best epoch's model on the test split, once: the run's result.

    Its weights are in memory if that epoch ran in this process, else (a resumed run that has not
    improved since) in ``best.pt``, which rank 0 reads for all.
    """
    if state.best_weights is None:
        best = state.run_dir / "checkpoints" / "best.pt"
        state.best_weights = state.world.on_main(lambda: load_checkpoint(best)["model_state"])
    state.model.load_state_dict(state.best_weights)
    test = state.data.test.to(state.device)
    state.test_result = result = evaluate_sharded(state.world, state.model, test.x, test.y, state.standardizer)
    return {
        "test_loss": result.loss,
        "test_accuracy": result.accuracy,
        "test_balanced_accuracy": result.balanced_accuracy,
        "per_class_accuracy": dict(zip(state.data.classes, result.per_class_accuracy)),
        "confusion_matrix": result.confusion_matrix,
    }


@contextlib.contextmanager
def start_run(config: TrainConfig, resume: Path | None = None) -> Iterator[TrainState]:
    """Everything before the first step; the run's lock is held until the ``with`` block ends.

    What cannot work is refused before the data are loaded (a ``--runs-dir`` that is a file, a run
    another process holds), and a new run directory is made only once the model is built. Under
    ``torchrun`` the processes join here, and rank 0 alone touches the run directory.
    """
    config = config.with_absolute_paths()
    with contextlib.ExitStack() as cleanup:
        world, device = cleanup.enter_context(join_processes(config.device, config.dist_timeout))
        check_cuda_graphs(config, device, world)
        check_soft_targets(config, world)

        def open_run() -> dict[str, Any]:  # rank 0: lock the run, read its last.pt (shared with the others)
            assert resume is not None
            lock, ckpt = open_for_resume(resume, config.epochs)
            cleanup.callback(lock.release)
            return ckpt

        if resume is None:
            world.on_main(lambda: check_runs_dir(config.runs_dir))
        else:
            ckpt = world.on_main(open_run)
        set_seed(config.seed)
        data = load_same_data(world, config, allow_download=resume is None)  # a resume never downloads
        if resume is not None:
            world.on_main(lambda: check_same_data(resume, ckpt, data))
        # a resumed run's images are preprocessed by the map it saved, not fitted again
        saved = None if resume is None else preprocessor_from_state(ckpt["standardizer"], ckpt.get("whitener"))
        state = new_state(config, data, device, world, preprocess=saved)
        if resume is None:
            state.run_dir = world.on_main(lambda: make_new_run(state, cleanup))
        else:
            state.run_dir = Path(resume)
            state.load_state_dict(ckpt)
            world.on_main(lambda: record_resumed_config(state.run_dir, config, state.epoch))
        world.broadcast_parameters(state.model)
        note_validation_split(state)
        world.on_main(lambda: make_checkpoints_folder(state.run_dir))
        yield state


def load_same_data(world: World, config: TrainConfig, allow_download: bool) -> DataBundle:
    """The run's data; with several processes rank 0 prepares them first and every process must hold the same.

    Raises:
        DataError: a process's data differ from rank 0's (another folder on another machine).
    """
    data = world.main_first(lambda: load_data(config.data, allow_download=allow_download))
    reference = world.broadcast(data.fingerprint())

    def check() -> None:
        change = describe_data_change(reference, data.fingerprint())
        if change:
            raise DataError(f"this process's data differ from rank 0's ({change}); give every machine the same data")

    world.everywhere(check)
    return data


def make_new_run(state: TrainState, cleanup: contextlib.ExitStack) -> Path:
    """A new run directory, locked until the run ends, with its ``config.json``."""
    state.run_dir = make_run_dir(state.config.runs_dir, state.config.run_name)
    cleanup.callback(RunLock(state.run_dir).release)
    write_run_config(state)
    return state.run_dir


def make_checkpoints_folder(run_dir: Path) -> None:
    try:
        (run_dir / "checkpoints").mkdir(exist_ok=True)
    except OSError as err:
        raise WriteError(f"cannot create {run_dir / 'checkpoints'}: {err.strerror or err}") from None


def new_state(
    config: TrainConfig,
    data: DataBundle,
    device: torch.device,
    world: World | None = None,
    preprocess: Preprocessor | None = None,
) -> TrainState:
    """A run at its start: the model initialised, the data on ``device``, the optimizer and schedule fresh.

    With several processes (``world``) each one's batches are its rows of every batch. ``preprocess``
    is the training split's standardiser (or whitener); ``None`` fits it (a resumed run passes its
    checkpoint's, so that its images are whitened once, by the saved map).
    """
    world = world or World()
    dtype = DTYPES[config.dtype]
    if preprocess is None:
        preprocess = fit_preprocessor(data.train.x, config.data.whiten, config.data.zca_eps)
    model = build_model(
        kind=config.model,
        in_features=data.in_features,
        num_classes=data.num_classes,
        hidden=config.hidden,
        activation=config.activation,
        backend=config.backend,
        seed=config.seed,
        output=config.output,
    ).to(device=device, dtype=dtype)
    train = data.train.to(device)
    loss_weights, sample_weights = balance_weights(config.data, data.train.y, data.num_classes)
    flip, crop = config.data.augment_flip, config.data.augment_crop
    assert flip is not None and crop is not None, "DataOptions resolves the dataset's augmentation"
    images, batch_preprocess = training_inputs(preprocess.to(device), train.x)
    batches = DeviceBatches(
        images,
        train.y,
        config.batch_size,
        batch_preprocess,
        shuffle=True,
        generator=torch.Generator(device=device).manual_seed(config.seed),
        augment_flip=flip,
        augment_crop=crop,
        sample_weights=sample_weights,
        dtype=dtype,
        shard=(world.rank, world.size),
    )
    optimizer = build_optimizer(config, model.parameters())
    state = TrainState(
        config=config,
        device=device,
        data=data,
        standardizer=preprocess,
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(config, optimizer, steps_per_epoch=len(batches)),
        batches=batches,
        val=data.val.to(device),
        class_weight=None if loss_weights is None else loss_weights.to(device=device, dtype=dtype),
        world=world,
    )
    state.gradient_step = choose_gradient_step(state)
    state.lr = optimizer.param_groups[0]["lr"]
    return state


def training_inputs(preprocess: Standardizer | Whitener, x: torch.Tensor) -> tuple[torch.Tensor, Standardizer]:
    """The training images the batches are cut from, and what each batch still needs after augmentation.

    Standardised per batch, after the flips and crops of the uint8 images; whitened once, here,
    and then flipped and cropped as whitened images (a crop's zero padding is the mean image), since
    the 3,072 × 3,072 map would cost as much per batch as the network's first layer.
    """
    if isinstance(preprocess, Whitener):
        return preprocess.images(x), Standardizer.identity(preprocess.in_features).to(x.device)
    return x, preprocess


def check_cuda_graphs(config: TrainConfig, device: torch.device, world: World) -> None:
    """Refuse ``--cuda-graphs`` on a device that is not CUDA, and under ``torchrun`` (before any data are loaded)."""
    if not config.cuda_graphs:
        return
    if device.type != "cuda":
        raise UsageError(
            f"--cuda-graphs needs a CUDA device, but this run's device is {device} "
            f"(--device {config.device}): pass --device cuda, or leave --cuda-graphs out"
        )
    if world.size > 1:
        raise UsageError(
            f"--cuda-graphs trains in one process, not {world.size} under torchrun: leave --cuda-graphs out"
        )


def check_soft_targets(config: TrainConfig, world: World) -> None:
    """Refuse ``--label-smoothing`` and ``--mixup`` under ``torchrun``: the all-reduce weighs each
    process's rows by their class labels, and mixup would mix only a process's own rows, drawing for
    them alone, which leaves the processes' data generators (the same by design) apart."""
    if (config.label_smoothing or config.mixup) and world.size > 1:
        raise UsageError(
            f"--label-smoothing and --mixup train in one process, not {world.size} under torchrun: leave them out"
        )


def write_run_config(state: TrainState) -> None:
    """``config.json``: the config (paths absolute), the command, versions, device and data counts."""
    data = state.data
    info = {
        "config": state.config.to_dict(),
        "command": sys.argv,
        "created": datetime.now().isoformat(timespec="seconds"),
        "device": str(state.device),
        "device_name": device_name(state.device),
        "processes": state.world.size,
        "data": {
            "source": data.source,
            "classes": data.classes,
            "counts": data.counts(),
            "image_size": data.image_size,
            "digest": data.digest,
        },
        "versions": versions(),
    }
    write_json(state.run_dir / "config.json", info)


def note_validation_split(state: TrainState) -> None:
    """Say on stderr when validation cannot choose the best epoch, or leaves classes out."""
    if not state.has_val:
        note(
            f"no validation split (--val-fraction {state.config.data.val_fraction:g} holds out no image): "
            "the last epoch's model is kept as the best"
        )
        return
    without = [name for name, n in state.data.counts()["val"].items() if n == 0]
    if without:
        note(
            f"class(es) {', '.join(without)} have no validation images (too few to hold any out); "
            "the validation balanced accuracy averages the other classes"
        )
