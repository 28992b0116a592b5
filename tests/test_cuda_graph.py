"""A captured training step replays the eager one.

The CUDA tests skip without a GPU (none has run them yet). Without one, the capture's structure runs
against stand-ins for ``torch.cuda``'s streams and graph that keep a real graph's contract: the
capture records a step on the static inputs without running it, each replay runs it on whatever the
static inputs hold and writes the captured outputs in place.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import pytest
import torch

from mlp_torch.models import BACKENDS, build_model
from mlp_torch.training import cuda_graph
from mlp_torch.training.cuda_graph import GraphedStep, training_step

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


def test_training_step_is_zero_grad_gradients_and_an_optimizer_step() -> None:
    model, optimizer = model_and_optimizer("custom", "cpu")
    reference, reference_optimizer = model_and_optimizer("custom", "cpu")
    step = training_step(model, optimizer)
    for x, y in batches("cpu", 3):
        loss, logits = step(x, y)
        reference_optimizer.zero_grad()
        ref_loss = torch.nn.functional.cross_entropy(reference(x), y)
        ref_loss.backward()
        reference_optimizer.step()
        torch.testing.assert_close(loss, ref_loss.detach())
        assert logits.shape == (12, 3) and not logits.requires_grad
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)


def test_capture_refuses_cpu_tensors_and_no_warmup() -> None:
    model, optimizer = model_and_optimizer("builtin", "cpu")
    ((x, y),) = batches("cpu", 1)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="must be on a CUDA device, not cpu"):
        GraphedStep(training_step(model, optimizer), x, y)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))  # refused before any step
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="warmup must be at least 1"):
            GraphedStep(training_step(model, optimizer), x.cuda(), y.cuda(), warmup=0)
        with pytest.raises(ValueError, match="must be on a CUDA device, not cpu"):
            GraphedStep(training_step(model, optimizer), x.cuda(), y)


# ---------------------------------------------------------------------------------------------
# Without a GPU: the capture's structure, against stand-ins with a CUDA graph's contract
# ---------------------------------------------------------------------------------------------


class FakeCuda:
    """Streams that log their use, and a graph that records a step instead of running it.

    ``graph(g)`` snapshots the model and optimizer on entry and restores them on exit, so the
    step run inside it (to find its inputs and outputs) leaves no trace, as a capture runs nothing.
    ``replay()`` runs the step on the captured inputs and copies its results into the captured outputs.
    """

    def __init__(self, step, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.log: list[str] = []
        self.model, self.optimizer = model, optimizer
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.capturing = False
        fake = self

        def recording_step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            fake.log.append("capture" if fake.capturing else "step")
            fake.calls.append((x, y))
            fake.outputs.append(step(x, y))
            return fake.outputs[-1]

        self.step = recording_step

        class Stream:
            def __init__(self, device: object = None, name: str = "side") -> None:
                self.name = name

            def wait_stream(self, other: Stream) -> None:
                fake.log.append(f"{self.name} waits for {other.name}")

        class CUDAGraph:
            def replay(self) -> None:
                fake.log.append("replay")
                x, y = self.inputs
                loss, logits = step(x, y)
                self.outputs[0].copy_(loss)
                self.outputs[1].copy_(logits)

        self.Stream, self.CUDAGraph = Stream, CUDAGraph
        self.current = Stream(name="current")

    def current_stream(self, device: object = None):
        return self.current

    @contextlib.contextmanager
    def stream(self, s) -> Iterator[None]:
        self.log.append(f"on {s.name}")
        yield
        self.log.append(f"off {s.name}")

    @contextlib.contextmanager
    def graph(self, g) -> Iterator[None]:
        saved = copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.optimizer.state_dict())
        self.capturing, first_call = True, len(self.calls)
        yield
        self.capturing = False
        (g.inputs,) = self.calls[first_call:]  # the step ran once, on the static inputs
        g.outputs = self.outputs[-1]
        self.model.load_state_dict(saved[0])
        self.optimizer.load_state_dict(saved[1])

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("Stream", "CUDAGraph", "current_stream", "stream", "graph"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        monkeypatch.setattr(cuda_graph, "_on_cuda", lambda t: True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_capture_structure_warms_up_on_a_side_stream_then_replays_like_eager_steps(monkeypatch, backend) -> None:
    first, *rest = batches("cpu", 4)
    eager, eager_optimizer = model_and_optimizer(backend, "cpu")
    graphed, graphed_optimizer = model_and_optimizer(backend, "cpu")
    fake = FakeCuda(training_step(graphed, graphed_optimizer), graphed, graphed_optimizer)
    fake.install(monkeypatch)
    eager_step = training_step(eager, eager_optimizer)
    for _ in range(2):
        eager_step(*first)

    replay = GraphedStep(fake.step, *first, warmup=2)
    # warm-up on a side stream that waits for the current one (and back), then one capture
    assert fake.log == ["side waits for current", "on side", "step", "step", "off side", "current waits for side"] + [
        "capture"
    ]
    static_x, static_y = fake.calls[-1]
    assert static_x is replay.x and static_y is replay.y  # the capture read the static inputs
    assert torch.equal(static_x, first[0]) and static_x is not first[0]  # a copy: the caller's batch stays theirs
    for p, q in zip(graphed.parameters(), eager.parameters()):
        assert torch.equal(p, q)  # the capture trained nothing; the warm-up trained as eager steps
    for x, y in rest:
        eager_loss, eager_logits = eager_step(x, y)
        loss, logits = replay(x, y)
        assert loss is replay.loss and logits is replay.logits  # the captured outputs, rewritten
        assert torch.equal(loss, eager_loss) and torch.equal(logits, eager_logits)
    assert fake.log[-3:] == ["replay"] * 3
    for p, q in zip(graphed.parameters(), eager.parameters()):
        assert torch.equal(p, q)


def test_replay_refuses_a_batch_of_another_shape_without_touching_the_inputs(monkeypatch) -> None:
    model, optimizer = model_and_optimizer("custom", "cpu")
    fake = FakeCuda(training_step(model, optimizer), model, optimizer)
    fake.install(monkeypatch)
    ((x, y),) = batches("cpu", 1)
    replay = GraphedStep(fake.step, x, y, warmup=1)
    static_x = replay.x.clone()
    with pytest.raises(ValueError, match=r"captured for x \(12, 20\) and y \(12,\); got \(5, 20\) and \(5,\)"):
        replay(x[:5], y[:5])
    assert torch.equal(replay.x, static_x) and "replay" not in fake.log


def test_warmup_below_one_is_refused_before_any_step(monkeypatch) -> None:
    model, optimizer = model_and_optimizer("custom", "cpu")
    fake = FakeCuda(training_step(model, optimizer), model, optimizer)
    fake.install(monkeypatch)
    ((x, y),) = batches("cpu", 1)
    with pytest.raises(ValueError, match="warmup must be at least 1"):
        GraphedStep(fake.step, x, y, warmup=0)
    assert fake.log == []


# ---------------------------------------------------------------------------------------------
# On a GPU
# ---------------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_replays_train_exactly_like_eager_steps(backend: str) -> None:
    """Warm-up on the first batch, then replays on the others: the same parameters as eager steps."""
    first, *rest = batches("cuda", 5)
    eager, eager_optimizer = model_and_optimizer(backend, "cuda")
    graphed, graphed_optimizer = model_and_optimizer(backend, "cuda")
    eager_step = training_step(eager, eager_optimizer)
    for _ in range(2):
        eager_step(*first)
    replay = GraphedStep(training_step(graphed, graphed_optimizer), *first, warmup=2)
    for x, y in rest:
        eager_loss, eager_logits = eager_step(x, y)
        loss, logits = replay(x, y)
        torch.testing.assert_close(loss, eager_loss, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(logits, eager_logits, rtol=1e-6, atol=1e-6)
    for p, q in zip(graphed.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


@needs_cuda
def test_a_batch_of_another_shape_is_refused() -> None:
    model, optimizer = model_and_optimizer("custom", "cuda")
    ((x, y),) = batches("cuda", 1)
    replay = GraphedStep(training_step(model, optimizer), x, y, warmup=1)
    with pytest.raises(ValueError, match="captured for x"):
        replay(x[:5], y[:5])
