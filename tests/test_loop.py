"""The loop and its callbacks: the events in order, stopping from a callback, leaving the writers out,
and an evaluation that runs one forward pass per batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mlp_torch.data import DataOptions, Standardizer, load_data
from mlp_torch.models import BACKENDS, build_model
from mlp_torch.training import Callback, CallbackList, TrainConfig, TrainState, evaluate, fit, start_run, train
from mlp_torch.training.callbacks import default_callbacks

STEPS_PER_EPOCH = 3  # 3 × 18 training images (2 per class go to validation) in batches of 20


def tiny_config(runs_dir: Path, **overrides) -> TrainConfig:
    data = DataOptions(
        dataset="synthetic", synthetic_train_per_class=20, synthetic_test_per_class=5, image_size=4, cache=False
    )
    values = dict(hidden=[4], epochs=2, batch_size=20, device="cpu", progress=False, histogram_every=0)
    return TrainConfig(**{**values, "runs_dir": runs_dir, "data": data, **overrides})


class Recorder(Callback):
    """Writes down every event, with the epoch and global step it saw."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []

    def note(self, event: str, state: TrainState) -> None:
        self.events.append((event, state.epoch, state.global_step))

    def on_train_start(self, state: TrainState) -> None:
        self.note("train_start", state)

    def on_epoch_start(self, state: TrainState) -> None:
        self.note("epoch_start", state)

    def on_step_start(self, state: TrainState) -> None:
        assert state.batch is not None and len(state.batch[0]) == len(state.batch[1])
        self.note("step_start", state)

    def on_step_end(self, state: TrainState) -> None:
        assert state.step_stats is not None and state.step_stats.samples > 0
        self.note("step_end", state)

    def on_epoch_end(self, state: TrainState) -> None:
        assert state.history[-1]["epoch"] == state.epoch
        self.note("epoch_end", state)

    def on_train_end(self, state: TrainState) -> None:
        assert state.final_metrics["status"] in ("completed", "interrupted")
        self.note("train_end", state)


def test_callbacks_see_every_event_in_order(tmp_path):
    recorder = Recorder()
    metrics = train(tiny_config(tmp_path), callbacks=[recorder])
    assert metrics["status"] == "completed"
    expected = [("train_start", 0, 0)]
    for epoch in range(2):
        steps = range(epoch * STEPS_PER_EPOCH, (epoch + 1) * STEPS_PER_EPOCH)
        expected.append(("epoch_start", epoch, steps[0]))
        for step in steps:
            expected += [("step_start", epoch, step), ("step_end", epoch, step + 1)]
        expected.append(("epoch_end", epoch + 1, steps[-1] + 1))
    expected.append(("train_end", 2, 2 * STEPS_PER_EPOCH))
    assert recorder.events == expected


class StopWhenValidationStalls(Callback):
    """What a sweep's pruner does: read the validation metric each epoch, stop the run."""

    def on_epoch_end(self, state: TrainState) -> None:
        assert state.val_result is not None
        state.should_stop = True


def test_a_callback_stops_the_run_which_ends_interrupted_and_resumable(tmp_path):
    metrics = train(tiny_config(tmp_path, epochs=3), callbacks=[StopWhenValidationStalls()])
    assert metrics["status"] == "interrupted" and metrics["epochs"] == 1 and metrics["signal"] is None
    run_dir = Path(metrics["run_dir"])
    assert (run_dir / "checkpoints" / "last.pt").is_file()


def test_a_run_without_the_writers_trains_and_writes_no_files_but_its_config(tmp_path):
    with start_run(tiny_config(tmp_path)) as state:
        metrics = fit(state, CallbackList(default_callbacks(state, writers=False)))
    assert metrics["status"] == "completed" and 0 <= metrics["test_accuracy"] <= 1
    files = sorted(str(p.relative_to(state.run_dir)) for p in state.run_dir.rglob("*"))
    assert files == [".lock", "checkpoints", "config.json"]


# ------------------------------------------------------------------------------ evaluate


@pytest.fixture(scope="module")
def split():
    bundle = load_data(
        DataOptions(dataset="synthetic", synthetic_train_per_class=20, synthetic_test_per_class=10, image_size=4)
    )
    return bundle.test, Standardizer.fit(bundle.train.x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["mlp", "perceptron"])
def test_evaluate_runs_one_forward_pass_per_batch(split, kind, backend):
    test, standardizer = split
    model = build_model(kind, in_features=48, num_classes=3, hidden=[5], backend=backend, seed=0)
    forwards = []
    for name in ("_forward", "_manual_forward"):
        original = getattr(model, name)

        def counted(*args, original=original, **kwargs):
            forwards.append(1)
            return original(*args, **kwargs)

        setattr(model, name, counted)
    result = evaluate(model, test.x, test.y, standardizer, batch_size=7)  # 30 images: 5 batches
    assert len(forwards) == 5
    x = standardizer(test.x)
    expected = model.loss(x, test.y)
    assert result.loss == pytest.approx(expected.item(), rel=1e-6)
    assert result.accuracy == (model(x).argmax(1) == test.y).double().mean().item()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kind, classes, output",
    [("softmax", 3, "softmax"), ("mlp", 3, "softmax"), ("mlp", 2, "sigmoid"), ("perceptron", 3, "softmax")],
)
def test_the_loss_from_logits_is_the_loss(kind, classes, output, backend):
    torch.manual_seed(0)
    model = build_model(kind, in_features=6, num_classes=classes, hidden=[4], backend=backend, seed=0, output=output)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape))  # the perceptron starts at zero: every prediction a tie
    x, y, weight = torch.randn(9, 6), torch.randint(0, classes, (9,)), torch.rand(classes)
    for class_weight in (None, weight):
        assert torch.equal(model.loss_from_logits(model(x), y, class_weight), model.loss(x, y, class_weight))
