"""``--cuda-graphs``: replayed gradients train exactly like eager ones.

The CUDA tests skip without a GPU (``scripts/gpu_check.sh`` runs them; they passed on an H100).
Without one, the capture's structure and the loop around it run against stand-ins for
``torch.cuda``'s streams and graph that keep a real graph's contract: the capture records a step on
the static inputs without running it, and each replay runs it on whatever the static inputs hold,
with the Python numbers it was captured with, writing into the tensors the capture allocated.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from mlp_torch.cli import main
from mlp_torch.data import DataOptions
from mlp_torch.errors import DivergenceError, UsageError
from mlp_torch.models import BACKENDS, Classifier, build_model
from mlp_torch.training import Callback, TrainConfig, TrainState, cuda_graph, start_run, train, trainer
from mlp_torch.training.checkpoint import load_checkpoint
from mlp_torch.training.cuda_graph import (
    GraphedGradients,
    GraphedStep,
    Step,
    eager_gradients,
    gradient_step,
    uses_cuda_graphs,
)
from mlp_torch.training.distributed import World
from mlp_torch.training.state import StepStats

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")


def model_and_optimizer(backend: str, device: str, momentum: float = 0.9):
    model = build_model("mlp", 20, 3, [16, 8], "sigmoid", backend, seed=0).to(device)
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum, foreach=True)


def batches(device: str, count: int, n: int = 12) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(n, 20, generator=g).to(device), torch.randint(0, 3, (n,), generator=g).to(device))
        for _ in range(count)
    ]


def tiny_config(runs_dir: Path, **overrides) -> TrainConfig:
    """3 steps per epoch: 54 training images in batches of 20, 20 and a last one of 14."""
    data = DataOptions(
        dataset="synthetic", synthetic_train_per_class=20, synthetic_test_per_class=5, image_size=4, cache=False
    )
    values = dict(hidden=[8], epochs=2, batch_size=20, device="cpu", progress=False, histogram_every=0)
    # a cosine schedule after one epoch of warm-up: the learning rate changes at every step
    values.update(schedule="cosine", warmup_epochs=1.0, momentum=0.9, weight_decay=5e-4)
    return TrainConfig(**{**values, "runs_dir": runs_dir, "data": data, **overrides})


def test_gradient_step_is_zero_grad_the_backends_gradients_and_their_numbers() -> None:
    model, _ = model_and_optimizer("custom", "cpu")
    reference, _ = model_and_optimizer("builtin", "cpu")
    step = gradient_step(model)
    for x, y in batches("cpu", 2):  # the second call starts from zero, not from the first's gradients
        loss, logits, numbers = step(x, y)
        reference.zero_grad()
        ref_logits = reference(x)
        ref_loss = torch.nn.functional.cross_entropy(ref_logits, y)
        ref_loss.backward()
        torch.testing.assert_close(loss, ref_loss.detach())
        torch.testing.assert_close(logits, ref_logits.detach())
        for p, q in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(p.grad, q.grad)
        stats = StepStats.read(numbers, model, len(y))
        assert stats.samples == 12 and stats.correct == (ref_logits.argmax(1) == y).sum().item()
        assert stats.loss == loss.item()  # the step's own loss, to the last bit
        squares = [sum(p.grad.double().square().sum().item() for p in layer.parameters()) for layer in model.layers]
        torch.testing.assert_close(stats.grad_sq, squares, rtol=1e-6, atol=0)  # norms summed in float32
        assert eager_gradients(model)(x, y) == stats
    assert all(p.equal(q) for p, q in zip(model.parameters(), reference.parameters()))  # no step taken


def test_capture_refuses_cpu_tensors_and_no_warmup() -> None:
    model, _ = model_and_optimizer("builtin", "cpu")
    ((x, y),) = batches("cpu", 1)
    with pytest.raises(ValueError, match="must be on a CUDA device, not cpu"):
        GraphedStep(gradient_step(model), x, y)
    assert all(p.grad is None for p in model.parameters())  # refused before any run
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="warmup must be at least 1"):
            GraphedStep(gradient_step(model), x.cuda(), y.cuda(), warmup=0)
        with pytest.raises(ValueError, match="must be on a CUDA device, not cpu"):
            GraphedStep(gradient_step(model), x.cuda(), y)


def test_cuda_graphs_on_the_cpu_is_refused_with_one_line(tmp_path, capsys) -> None:
    argv = ["train", "--dataset", "synthetic", "--image-size", "4", "--no-progress", "--no-cache"]
    code = main([*argv, "--device", "cpu", "--cuda-graphs", "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "--cuda-graphs needs a CUDA device, but this run's device is cpu (--device cpu)" in err[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_cuda_graphs_is_on_by_default_on_cuda_alone() -> None:
    assert TrainConfig().cuda_graphs is None  # neither flag given
    assert uses_cuda_graphs(None, torch.device("cuda")) and uses_cuda_graphs(None, torch.device("cuda:1"))
    assert not uses_cuda_graphs(None, torch.device("cpu")) and not uses_cuda_graphs(None, torch.device("mps"))
    assert not uses_cuda_graphs(False, torch.device("cuda"))  # --no-cuda-graphs
    assert uses_cuda_graphs(True, torch.device("cuda"))


def test_cuda_graphs_under_torchrun_is_refused() -> None:
    config = TrainConfig(cuda_graphs=True)
    with pytest.raises(UsageError, match="--cuda-graphs trains in one process, not 2 under torchrun"):
        trainer.check_cuda_graphs(config, torch.device("cuda"), World(rank=1, size=2))
    trainer.check_cuda_graphs(config, torch.device("cuda"), World())  # one process on CUDA: allowed


def test_resume_takes_cuda_graphs_from_the_command_line(tmp_path, capsys) -> None:
    """How a step is launched may change on resume, like the device: here to a refusal on the CPU."""
    run = Path(train(tiny_config(tmp_path, epochs=1))["run_dir"])
    config = (run / "config.json").read_text()
    capsys.readouterr()
    code = main(["train", "--resume", str(run), "--epochs", "2", "--cuda-graphs"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--cuda-graphs needs a CUDA device" in err[0], err
    assert (run / "config.json").read_text() == config


# ---------------------------------------------------------------------------------------------
# Without a GPU: the capture's structure, against stand-ins with a CUDA graph's contract
# ---------------------------------------------------------------------------------------------


class FakeCuda:
    """Streams that log their use, and a graph that records a step instead of running it.

    A real capture runs the step's Python but none of its kernels. So ``graph(g)`` lets the step
    run (its Python effects, such as the ``.grad`` tensors backward assigns, are what a capture
    leaves behind) and then puts the model's and the optimizer's values back. The graph keeps what
    a real one holds: the step's static inputs, its outputs and the gradient tensors (the memory its
    kernels write), and the optimizer's learning rates as they were (the numbers its kernels baked
    in). ``replay()`` runs the step on the static inputs with those learning rates, copies what it
    computed into the captured outputs and gradients, and leaves every ``.grad`` attribute as it was.
    """

    def __init__(self, model: torch.nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.log: list[str] = []
        self.model, self.optimizer = model, optimizer
        self.capturing = False
        self.captured: list[tuple[Step, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]] = []
        fake = self

        class Stream:
            def __init__(self, device: object = None, name: str = "side") -> None:
                self.name = name

            def wait_stream(self, other: Stream) -> None:
                fake.log.append(f"{self.name} waits for {other.name}")

        class CUDAGraph:
            step: Step
            inputs: tuple[torch.Tensor, torch.Tensor]
            outputs: tuple[torch.Tensor, ...]
            grads: list[torch.Tensor]
            lrs: list[float]

            def replay(self) -> None:
                fake.log.append("replay")
                assert fake.model is not None and fake.optimizer is not None
                params, groups = list(fake.model.parameters()), fake.optimizer.param_groups
                grads_now, lrs_now = [p.grad for p in params], [group["lr"] for group in groups]
                for group, lr in zip(groups, self.lrs):
                    group["lr"] = lr
                outputs = self.step(*self.inputs)
                for group, lr in zip(groups, lrs_now):
                    group["lr"] = lr
                for static, new in zip((*self.outputs, *self.grads), (*outputs, *[p.grad for p in params])):
                    static.copy_(new)
                for p, grad in zip(params, grads_now):
                    p.grad = grad

        self.Stream, self.CUDAGraph = Stream, CUDAGraph
        self.current = Stream(name="current")

    def wrap(self, step: Step) -> Step:
        """``step``, logged as ``step`` (eager) or ``capture``, and handed to the graph when captured."""

        def recording_step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
            self.log.append("capture" if self.capturing else "step")
            outputs = step(x, y)
            if self.capturing:
                self.captured.append((step, x, y, outputs))
            return outputs

        return recording_step

    def current_stream(self, device: object = None):
        return self.current

    @contextlib.contextmanager
    def stream(self, s) -> Iterator[None]:
        self.log.append(f"on {s.name}")
        yield
        self.log.append(f"off {s.name}")

    @contextlib.contextmanager
    def graph(self, g) -> Iterator[None]:
        assert self.model is not None and self.optimizer is not None
        saved = copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.optimizer.state_dict())
        self.capturing, self.captured = True, []
        yield
        self.capturing = False
        ((g.step, x, y, g.outputs),) = self.captured  # the step ran once, on the static inputs
        g.inputs = (x, y)
        g.grads = [p.grad for p in self.model.parameters()]
        g.lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.model.load_state_dict(saved[0])
        self.optimizer.load_state_dict(saved[1])

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("Stream", "CUDAGraph", "current_stream", "stream", "graph"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        monkeypatch.setattr(cuda_graph, "_on_cuda", lambda t: True)
        real_gradient_step = cuda_graph.gradient_step
        monkeypatch.setattr(cuda_graph, "gradient_step", lambda *a, **k: self.wrap(real_gradient_step(*a, **k)))
        monkeypatch.setattr(trainer, "check_cuda_graphs", lambda *args: None)  # the CPU is the "GPU"


def sgd_after(step: Callable, optimizer: torch.optim.Optimizer) -> Callable:
    """``step`` followed by ``optimizer.step()``, as the loop takes them."""

    def train_step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = step(x, y)
        optimizer.step()
        return outputs

    return train_step


@pytest.mark.parametrize("backend", BACKENDS)
def test_capture_structure_warms_up_on_a_side_stream_then_replays_like_eager_steps(monkeypatch, backend) -> None:
    first, *rest = batches("cpu", 4)
    eager, eager_optimizer = model_and_optimizer(backend, "cpu")
    graphed, graphed_optimizer = model_and_optimizer(backend, "cpu")
    fake = FakeCuda(graphed, graphed_optimizer)
    fake.install(monkeypatch)
    eager_step = sgd_after(gradient_step(eager), eager_optimizer)

    replay = GraphedStep(fake.wrap(gradient_step(graphed)), *first, warmup=2)
    # warm-up on a side stream that waits for the current one (and back), then one capture
    assert fake.log == ["side waits for current", "on side", "step", "step", "off side", "current waits for side"] + [
        "capture"
    ]
    ((_, static_x, static_y, _),) = fake.captured
    assert static_x is replay.x and static_y is replay.y  # the capture read the static inputs
    assert torch.equal(static_x, first[0]) and static_x is not first[0]  # a copy: the caller's batch stays theirs
    for p, q in zip(graphed.parameters(), eager.parameters()):
        assert torch.equal(p, q)  # warm-up and capture computed gradients only: nothing trained yet
    for x, y in [first, *rest]:
        eager_loss, eager_logits, eager_numbers = eager_step(x, y)
        outputs = replay(x, y)
        graphed_optimizer.step()
        assert outputs is replay.outputs  # the captured outputs, rewritten
        for got, want in zip(outputs, (eager_loss, eager_logits, eager_numbers)):
            assert torch.equal(got, want)
    assert fake.log[-4:] == ["replay"] * 4
    for p, q in zip(graphed.parameters(), eager.parameters()):
        assert torch.equal(p, q)


def test_replay_refuses_a_batch_of_another_shape_without_touching_the_inputs(monkeypatch) -> None:
    model, optimizer = model_and_optimizer("custom", "cpu")
    fake = FakeCuda(model, optimizer)
    fake.install(monkeypatch)
    ((x, y),) = batches("cpu", 1)
    replay = GraphedStep(fake.wrap(gradient_step(model)), x, y, warmup=1)
    static_x = replay.x.clone()
    with pytest.raises(ValueError, match=r"captured for x \(12, 20\) and y \(12,\); got \(5, 20\) and \(5,\)"):
        replay(x[:5], y[:5])
    assert torch.equal(replay.x, static_x) and "replay" not in fake.log


def test_warmup_below_one_is_refused_before_any_step(monkeypatch) -> None:
    model, optimizer = model_and_optimizer("custom", "cpu")
    fake = FakeCuda(model, optimizer)
    fake.install(monkeypatch)
    ((x, y),) = batches("cpu", 1)
    with pytest.raises(ValueError, match="warmup must be at least 1"):
        GraphedStep(fake.wrap(gradient_step(model)), x, y, warmup=0)
    assert fake.log == []


def test_graphed_gradients_replay_full_batches_and_point_each_grad_at_the_graphs(monkeypatch) -> None:
    """A smaller batch runs eagerly; the next replay's gradients are what ``.grad`` then holds."""
    model, optimizer = model_and_optimizer("manual", "cpu")
    reference, _ = model_and_optimizer("manual", "cpu")
    eager = eager_gradients(reference)
    fake = FakeCuda(model, optimizer)
    fake.install(monkeypatch)
    gradients = GraphedGradients(model, None, batch_size=12, warmup=1)
    full, other = batches("cpu", 2)
    for x, y in [full, (full[0][:5], full[1][:5]), other]:
        assert gradients(x, y) == eager(x, y)
        for p, q in zip(model.parameters(), reference.parameters()):
            assert torch.equal(p.grad, q.grad)
    assert fake.log == ["side waits for current", "on side", "step", "off side", "current waits for side"] + [
        "capture",
        "replay",
        "step",  # the batch of 5, eager
        "replay",
    ]


class Watch(Callback):
    """Hands the run's model and optimizer to the stand-ins, and keeps the parameters each step starts from."""

    def __init__(self, fake: FakeCuda | None = None) -> None:
        self.fake = fake
        self.before_step: list[torch.Tensor] = []

    def on_train_start(self, state: TrainState) -> None:
        if self.fake is not None:
            self.fake.model, self.fake.optimizer = state.model, state.optimizer

    def on_step_start(self, state: TrainState) -> None:
        self.before_step = [p.detach().clone() for p in state.model.parameters()]


def same_runs(graphed: dict, eager: dict, exact: bool = True) -> None:
    """Two runs' epochs and final parameters: equal, bit for bit (``exact``) or to float32 rounding."""

    def check(a: torch.Tensor, b: torch.Tensor) -> bool:
        return torch.equal(a, b) if exact else torch.allclose(a, b, rtol=1e-5, atol=1e-6)

    def numbers(record: dict) -> torch.Tensor:
        keys = ("train_loss", "train_accuracy", "val_loss", "lr")
        return torch.tensor([record[k] for k in keys] + record["grad_norm"], dtype=torch.float64)

    for g, e in zip(graphed["history"], eager["history"], strict=True):
        assert check(numbers(g), numbers(e)), (g, e)
    last = [load_checkpoint(Path(m["run_dir"]) / "checkpoints" / "last.pt") for m in (graphed, eager)]
    for name, tensor in last[1]["model_state"].items():
        assert check(last[0]["model_state"][name], tensor), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_with_cuda_graphs_trains_like_one_without(tmp_path, monkeypatch, backend) -> None:
    """Full batches replay, the last one of 14 runs eagerly, and the schedule's learning rate reaches every step."""
    eager = train(tiny_config(tmp_path / "eager", backend=backend))
    fake = FakeCuda()
    fake.install(monkeypatch)
    graphed = train(tiny_config(tmp_path / "graphed", backend=backend, cuda_graphs=True), callbacks=[Watch(fake)])
    warmup_and_capture = ["side waits for current", "on side", *["step"] * 3, "off side", "current waits for side"]
    epoch = ["replay", "replay", "step"]  # batches of 20, 20, 14
    assert fake.log == [*warmup_and_capture, "capture", *epoch, *epoch]
    assert len({h["lr"] for h in graphed["history"]}) == 2  # the schedule moved (and every step is compared)
    same_runs(graphed, eager)


# every kind of run the loop trains, beside the default mlp: each must capture (no sync in its step)
# and replay into the run it trains eagerly
VARIANTS = {
    "softmax": dict(model="softmax"),
    "perceptron": dict(model="perceptron"),
    "relu": dict(activation="relu", hidden=[8, 6]),
    "adam": dict(optimizer="adam", lr=0.01),
    "label-smoothing": dict(label_smoothing=0.1),
    "mixup": dict(mixup=0.4),
    "balance-weights": dict(balance="weights"),
    "float64": dict(dtype="float64"),
    "check-grads": dict(check_grads_every=2),
    "spiral": dict(dataset="spiral"),
    "sigmoid-output": dict(dataset="spiral", arms=2, output="sigmoid"),
    "binary-perceptron": dict(dataset="spiral", arms=2, model="perceptron"),
}


def variant_config(runs_dir: Path, variant: str, backend: str, **overrides) -> TrainConfig:
    values = dict(VARIANTS[variant])
    data = tiny_config(runs_dir).data
    if "balance" in values:  # the loss's class weights (all 1 here: the synthetic classes are balanced)
        data = dataclasses.replace(data, balance=values.pop("balance"))
    if "dataset" in values:  # 2-D points: 60 in train, of which 54 after the validation split
        data = DataOptions(dataset=values.pop("dataset"), samples=60, arms=values.pop("arms", 3), cache=False)
    return tiny_config(runs_dir, backend=backend, data=data, **{**values, **overrides})


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("backend", ["custom", "manual"])
def test_each_kind_of_run_with_cuda_graphs_trains_like_one_without(tmp_path, monkeypatch, variant, backend) -> None:
    eager = train(variant_config(tmp_path / "eager", variant, backend))
    fake = FakeCuda()
    fake.install(monkeypatch)
    graphed = train(variant_config(tmp_path / "graphed", variant, backend, cuda_graphs=True), callbacks=[Watch(fake)])
    assert "capture" in fake.log and fake.log.count("replay") >= 2
    same_runs(graphed, eager)


def test_a_non_finite_gradient_under_cuda_graphs_stops_before_the_optimizer_steps(tmp_path, monkeypatch) -> None:
    fake = FakeCuda()
    fake.install(monkeypatch)
    watch = Watch(fake)
    original = Classifier.compute_gradients

    def poisoned(self, *args, **kwargs):  # in the graph's second replay, a gradient entry overflows
        result = original(self, *args, **kwargs)
        if fake.log.count("replay") == 2:
            self.layers[1].weight.grad[0, 0] = float("inf")
        return result

    monkeypatch.setattr(Classifier, "compute_gradients", poisoned)
    with pytest.raises(DivergenceError, match=r"epoch 1, step 2 .*gradient of layer1 has norm inf"):
        train(tiny_config(tmp_path, cuda_graphs=True), callbacks=[watch])
    assert fake.log[-2:] == ["replay", "replay"] and fake.model is not None
    for p, before in zip(fake.model.parameters(), watch.before_step):
        assert torch.equal(p, before)  # the optimizer never stepped on the diverged gradients


# ---------------------------------------------------------------------------------------------
# On a GPU
# ---------------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_replays_train_exactly_like_eager_steps(backend: str) -> None:
    """Warm-up and capture on the first batch, then replays and optimizer steps: the eager parameters."""
    first, *rest = batches("cuda", 5)
    eager, eager_optimizer = model_and_optimizer(backend, "cuda")
    graphed, graphed_optimizer = model_and_optimizer(backend, "cuda")
    eager_step = sgd_after(gradient_step(eager), eager_optimizer)
    replay = GraphedStep(gradient_step(graphed), *first, warmup=2)
    for x, y in [first, *rest]:
        eager_loss, eager_logits, _ = eager_step(x, y)
        loss, logits, _ = replay(x, y)
        graphed_optimizer.step()
        torch.testing.assert_close(loss, eager_loss, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(logits, eager_logits, rtol=1e-6, atol=1e-6)
    for p, q in zip(graphed.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


@needs_cuda
def test_a_batch_of_another_shape_is_refused() -> None:
    model, _ = model_and_optimizer("custom", "cuda")
    ((x, y),) = batches("cuda", 1)
    replay = GraphedStep(gradient_step(model), x, y, warmup=1)
    with pytest.raises(ValueError, match="captured for x"):
        replay(x[:5], y[:5])


@needs_cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cuda_run_with_cuda_graphs_trains_like_one_without(tmp_path, backend: str) -> None:
    """The whole loop on the GPU: replayed full batches, an eager last batch, a schedule, checkpoints."""
    eager = train(tiny_config(tmp_path / "eager", backend=backend, device="cuda"))
    graphed = train(tiny_config(tmp_path / "graphed", backend=backend, device="cuda", cuda_graphs=True))
    same_runs(graphed, eager, exact=False)


@needs_cuda
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_each_kind_of_cuda_run_with_cuda_graphs_trains_like_one_without(tmp_path, variant, backend) -> None:
    eager = train(variant_config(tmp_path / "eager", variant, backend, device="cuda", cuda_graphs=False))
    graphed = train(variant_config(tmp_path / "graphed", variant, backend, device="cuda"))  # the default on CUDA
    same_runs(graphed, eager, exact=False)


@needs_cuda
def test_a_cuda_run_keeps_the_training_and_validation_splits_on_the_gpu(tmp_path) -> None:
    with start_run(tiny_config(tmp_path, device="cuda", cuda_graphs=True)) as state:
        assert state.batches.x.is_cuda and state.batches.y.is_cuda and state.val.x.is_cuda
        assert isinstance(state.gradient_step, GraphedGradients)
        x, y = state.batches.batch(state.batches.epoch_order(), 0)
        assert x.is_cuda and y.is_cuda
