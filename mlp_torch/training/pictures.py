"""The lecture's pictures while a run trains: the activation functions once, and 2-D decision boundaries.

Two callbacks of the writers group (:func:`~mlp_torch.training.callbacks.default_callbacks`),
writing into the run's TensorBoard log through the :class:`~mlp_torch.training.tensorboard.RunLogger`
and into its directory:

* :class:`ActivationFigure`: at the start of a new run, the image ``activations``: step, sigmoid,
  tanh and ReLU with the derivatives our backward computes (drawn once per process).
* :class:`DecisionBoundaries`, for the 2-D datasets: every ``--boundary-every`` epochs and after
  the last one, the image ``decision_boundary`` at step = epoch (TensorBoard's IMAGES tab shows a
  slider through training), also written to ``decision_boundary.png``; at the end that file shows
  the run's result instead, the best epoch's model that was scored on the test split.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from ..errors import WriteError
from ..utils import atomic_write
from .figures import activation_figure, decision_boundary_figure, figure_pixels, png_bytes
from .loop import Callback
from .state import TrainState
from .tensorboard import RunLogger

BOUNDARY_FRAMES = 10  # --boundary-every's default: this many frames over the run
BOUNDARY_PNG = "decision_boundary.png"


def boundary_interval(boundary_every: int | None, epochs: int) -> int:
    """Epochs between two decision-boundary frames: ``--boundary-every``, by default a tenth of the run (≥ 1).

    Args:
        boundary_every: the config's value; ``None`` for the default, 0 for none but the final picture.
        epochs: the run's epochs in all.
    """
    if boundary_every is not None:
        return boundary_every
    return max(1, math.ceil(epochs / BOUNDARY_FRAMES))


@functools.cache
def activation_pixels() -> np.ndarray:
    """The activation-function figure as RGB pixels, drawn once per process (it depends on nothing)."""
    pixels = figure_pixels(activation_figure())
    pixels.flags.writeable = False  # shared by every run of the process
    return pixels


def _add_image(log: RunLogger, tag: str, pixels: np.ndarray, step: int) -> None:
    try:
        log.writer.add_image(tag, pixels, step, dataformats="HWC")
    except OSError as err:
        raise WriteError(f"cannot write the TensorBoard log in {log.run_dir}: {err.strerror or err}") from None


class ActivationFigure(Callback):
    """The activation functions and their derivatives, TensorBoard image ``activations``, once per run."""

    def __init__(self, log: RunLogger) -> None:
        self.log = log

    def on_train_start(self, state: TrainState) -> None:
        if state.epoch == 0 and state.progress is None:  # a new run, not a resumed one
            _add_image(self.log, "activations", activation_pixels(), 0)


class DecisionBoundaries(Callback):
    """The predicted class over the plane, with the training points: a frame every ``every`` epochs and at the end.

    Args:
        log: the run's TensorBoard log.
        every: ``--boundary-every`` (``None``: a tenth of the epochs; 0: only the final picture).
    """

    def __init__(self, log: RunLogger, every: int | None) -> None:
        self.log = log
        self.every = every
        self.saved_epoch: int | None = None  # the epoch whose frame decision_boundary.png holds

    def on_epoch_end(self, state: TrainState) -> None:
        every = boundary_interval(self.every, state.config.epochs)
        if (every and state.epoch % every == 0) or state.completed:
            pixels = self.draw(state, f"epoch {state.epoch} of {state.config.epochs}")
            _add_image(self.log, "decision_boundary", pixels, state.epoch)
            self.save(state, pixels)
            self.saved_epoch = state.epoch

    def on_train_end(self, state: TrainState) -> None:
        if state.test_result is not None:  # completed: the model holds the best epoch's weights now
            chosen = "the best by validation" if state.has_val else "the last (no validation split)"
            test = f"test accuracy {100 * state.test_result.accuracy:.1f} %"
            title = f"the run's model: epoch {state.best['epoch']} of {state.epoch}, {chosen}; {test}"
            self.save(state, self.draw(state, title))
        elif state.progress is not None or self.saved_epoch != state.epoch:  # stopped where no frame was drawn
            where = f"during epoch {state.epoch + 1}" if state.progress is not None else f"after epoch {state.epoch}"
            self.save(state, self.draw(state, f"stopped {where} of {state.config.epochs}"))

    @staticmethod
    def draw(state: TrainState, title: str) -> np.ndarray:
        train = state.data.train
        figure = decision_boundary_figure(
            state.model, train.x, train.y, state.data.classes, state.standardizer, title=title
        )
        return figure_pixels(figure)

    @staticmethod
    def save(state: TrainState, pixels: np.ndarray) -> None:
        path: Path = state.run_dir / BOUNDARY_PNG
        try:
            with atomic_write(path) as f:
                f.write(png_bytes(pixels))
        except OSError as err:
            raise WriteError(f"cannot write {path}: {err.strerror or err}") from None


def picture_callbacks(state: TrainState, log: RunLogger) -> list[Callback]:
    """The activation figure for every run; decision boundaries for a model of 2-D points."""
    callbacks: list[Callback] = [ActivationFigure(log)]
    if not state.data.has_images and state.data.in_features == 2:
        callbacks.append(DecisionBoundaries(log, state.config.boundary_every))
    return callbacks
