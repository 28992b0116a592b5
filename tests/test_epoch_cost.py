"""What a default epoch does beside its steps: the figures are drawn every fifth epoch and at the last."""

from __future__ import annotations

from mlp_torch.data import DataOptions
from mlp_torch.training import TrainConfig, train
from mlp_torch.training.callbacks import TensorBoardLog


def test_figures_are_drawn_every_fifth_epoch_and_at_the_last_by_default(tmp_path, monkeypatch):
    drawn: list[int] = []
    monkeypatch.setattr(TensorBoardLog, "figures", lambda self, state: drawn.append(state.epoch))
    data = DataOptions(
        dataset="synthetic", synthetic_train_per_class=8, synthetic_test_per_class=2, image_size=4, cache=False
    )
    config = TrainConfig(
        hidden=[4], epochs=6, batch_size=16, device="cpu", runs_dir=tmp_path, progress=False, data=data
    )
    train(config)
    assert drawn == [5, 6]
