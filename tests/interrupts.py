"""A signal sent from inside a training step, as a user's Ctrl-C arrives while the run is busy."""

from __future__ import annotations

import os
import signal

import pytest

import mlp_torch.training.trainer as trainer
from mlp_torch.training import Callback, TrainState


class SignalDuringStep(Callback):
    """Send ``signum`` to this process during step ``global_step`` (0-based; ``None``: the first step run)."""

    def __init__(self, global_step: int | None = None, signum: int = signal.SIGINT) -> None:
        self.global_step = global_step
        self.signum = signum
        self.sent = False

    def on_step_start(self, state: TrainState) -> None:
        if not self.sent and self.global_step in (None, state.global_step):
            self.sent = True
            os.kill(os.getpid(), self.signum)


def signal_during_step(monkeypatch: pytest.MonkeyPatch, global_step: int | None = None, signum: int = signal.SIGINT):
    """The same for every run started while ``monkeypatch`` lasts, also through ``mlp_torch.cli.main``."""
    default_callbacks = trainer.default_callbacks

    def with_signal(state: TrainState, writers: bool = True) -> list[Callback]:
        return [*default_callbacks(state, writers), SignalDuringStep(global_step, signum)]

    monkeypatch.setattr(trainer, "default_callbacks", with_signal)
