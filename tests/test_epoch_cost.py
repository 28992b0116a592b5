"""What a default epoch does beside its steps: figures every fifth epoch and at the last, checkpoints in the
background."""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

import pytest
import torch

from mlp_torch.data import DataOptions
from mlp_torch.errors import WriteError
from mlp_torch.training import TrainConfig, callbacks, load_checkpoint, train
from mlp_torch.training.callbacks import TensorBoardLog
from mlp_torch.training.checkpoint import write_checkpoint_bytes
from mlp_torch.training.loop import Callback
from mlp_torch.training.state import TrainState


def _tiny(tmp_path, epochs: int) -> TrainConfig:
    data = DataOptions(
        dataset="synthetic", synthetic_train_per_class=32, synthetic_test_per_class=4, image_size=4, cache=False
    )
    return TrainConfig(
        hidden=[8], epochs=epochs, batch_size=16, device="cpu", runs_dir=tmp_path, progress=False, data=data
    )


def test_figures_are_drawn_every_fifth_epoch_and_at_the_last_by_default(tmp_path, monkeypatch):
    drawn: list[int] = []
    monkeypatch.setattr(TensorBoardLog, "figures", lambda self, state: drawn.append(state.epoch))
    train(_tiny(tmp_path, epochs=6))
    assert drawn == [5, 6]


class EpochEndWeights(Callback):
    """The model's tensors at every epoch's end, as the checkpoints of that epoch must hold them."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_epoch_end(self, state: TrainState) -> None:
        self.weights[state.epoch] = {k: v.detach().clone() for k, v in state.model.state_dict().items()}


def test_checkpoints_written_while_the_next_epoch_trains_hold_their_own_epoch(tmp_path, monkeypatch):
    """The files are written in the background, slowly here: each still holds the state of its epoch's end."""
    written: list[tuple[str, int]] = []

    def slow_write(path, data):
        time.sleep(0.3)  # several epochs of this tiny net train meanwhile
        write_checkpoint_bytes(path, data)
        written.append((path.name, load_checkpoint(path)["epoch"]))

    monkeypatch.setattr(callbacks, "write_checkpoint_bytes", slow_write)
    seen = EpochEndWeights()
    metrics = train(_tiny(tmp_path, epochs=6), callbacks=[seen])
    run = Path(metrics["run_dir"]) / "checkpoints"
    last, best = load_checkpoint(run / "last.pt"), load_checkpoint(run / "best.pt")
    assert last["epoch"] == 6 and len(last["history"]) == 6
    for ckpt in (last, best):
        epoch_weights = seen.weights[ckpt["epoch"]]
        assert all(torch.equal(ckpt["model_state"][k], v) for k, v in epoch_weights.items())
    # in order, best.pt before last.pt of the same epoch; the run's end waited for the last write
    assert written[-1] == ("last.pt", 6)
    for (name, epoch), (next_name, next_epoch) in zip(written, written[1:]):
        assert epoch <= next_epoch and not (epoch == next_epoch and name == "last.pt" and next_name == "best.pt")


def test_a_checkpoint_write_that_fails_in_the_background_stops_the_run_by_the_next_epochs_end(tmp_path, monkeypatch):
    def full_disk(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(callbacks, "write_checkpoint_bytes", full_disk)
    with pytest.raises(WriteError, match=r"cannot write .*/checkpoints/best\.pt: No space left on device; the checkp"):
        train(_tiny(tmp_path, epochs=5))
    (run_dir,) = tmp_path.iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "No space left on device" in metrics["error"]
    assert len(metrics["history"]) <= 2  # raised at epoch 2's end at the latest, not at the run's end
    assert not list((run_dir / "checkpoints").iterdir())
