"""``--cuda-graphs`` (the default on CUDA): each full batch's forward and backward replayed from one CUDA graph.

Run on an H100 (``scripts/gpu_check.sh``, torch 2.11): every backend, model kind and loss option
trains the same run replayed as eagerly (``tests/test_cuda_graph.py``), and a synthetic run's losses
were equal to the last bit; 1.2-2.8x the eager steps/s (README, "On a GPU"). Without a GPU the
tests run the capture's structure against stand-ins for ``torch.cuda``'s streams and graphs.

On a GPU a small MLP's step is launch-bound: a few dozen kernels of microseconds each, every one
launched from Python. A CUDA graph records the kernels of one step once and replays them all with
a single launch. PyTorch's recipe ("whole-network capture" in the ``torch.cuda.graphs`` notes):

1. static inputs: each replay reads the same tensors, so a batch is copied into them;
2. a few warm-up runs on a side stream, which create what the first run creates (autograd's
   buffers, cuBLAS's workspace) outside the capture;
3. the capture of one run, starting from ``zero_grad(set_to_none=True)``: backward then
   allocates the gradients from the graph's memory pool, and every replay writes them afresh;
4. replays.

What the graph holds, and what it leaves to the loop: the capture is :func:`gradient_step` —
``zero_grad``, the backend's forward and backward, and the step's numbers gathered into one tensor
(:meth:`StepStats.gather`). The loop then reads those numbers (its one sync per step), checks that
they are finite, and steps the optimizer and the schedule eagerly, exactly as without graphs:

* the divergence check still comes before the optimizer steps, so a non-finite loss or gradient
  leaves the parameters as the last good step left them. With the optimizer inside the graph the
  update would already be done when the numbers arrive, and undoing it would take a copy of every
  parameter and momentum buffer at every step;
* the learning-rate schedule needs nothing: a capture bakes the Python numbers of the ops it
  records into its kernels, so an optimizer captured with the scheduler's float ``lr`` would
  replay the first step's ``lr`` for ever (it would need a device tensor updated in place, and
  ``capturable`` optimizers). Stepped eagerly, the optimizer reads the scheduler's current ``lr``;
  checkpoints, resume and Adam stay as they are.

The price is the optimizer's few kernels per parameter, still launched from Python, and the
batching (shuffling, augmentation, standardisation), which draws random numbers and stays eager
too. A batch of another shape (an epoch's last, smaller one) runs the same step eagerly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..models.base import Classifier
from .state import StepStats

Step = Callable[[Tensor, Tensor], tuple[Tensor, ...]]

__all__ = ["GraphedGradients", "GraphedStep", "Step", "eager_gradients", "gradient_step", "uses_cuda_graphs"]


def gradient_step(model: Classifier, class_weight: Tensor | None = None) -> Step:
    """``(x, y) -> (loss, logits, stats)``: ``zero_grad(set_to_none=True)``, the backend's gradients, and
    :meth:`StepStats.gather` of them: one step up to the optimizer, with no sync (a graph can record it)."""

    def step(x: Tensor, y: Tensor) -> tuple[Tensor, ...]:
        model.zero_grad(set_to_none=True)
        loss, logits = model.compute_gradients(x, y, class_weight=class_weight)
        return loss, logits, StepStats.gather(model, loss, logits, y)

    return step


def eager_gradients(model: Classifier, class_weight: Tensor | None = None) -> Callable[[Tensor, Tensor], StepStats]:
    """``(x, y) -> StepStats``: :func:`gradient_step`, then its numbers read from the device."""
    step = gradient_step(model, class_weight)

    def gradients(x: Tensor, y: Tensor) -> StepStats:
        *_, numbers = step(x, y)
        return StepStats.read(numbers, model, len(y))

    return gradients


def _on_cuda(t: Tensor) -> bool:
    return t.is_cuda


def uses_cuda_graphs(flag: bool | None, device: torch.device) -> bool:
    """Whether one process's run replays its steps: ``--cuda-graphs`` / ``--no-cuda-graphs`` as given,
    and without either (``None``) on CUDA only (:func:`~mlp_torch.training.trainer.check_cuda_graphs`
    has refused ``True`` elsewhere)."""
    return flag if flag is not None else device.type == "cuda"


class GraphedStep:
    """``step`` captured once on CUDA; calling the object copies a batch in and replays it.

    Args:
        step: a function of a batch, such as :func:`gradient_step`'s, that reads only its arguments
            and the tensors it closes over, and returns tensors.
        x: an example batch of inputs, on a CUDA device; every later batch must have its shape.
        y: the example batch's targets.
        warmup: runs of ``step`` on ``(x, y)`` before the capture (at least 1); a step that
            updates parameters trains on ``(x, y)`` in each.

    Raises:
        ValueError: ``x`` or ``y`` not on CUDA, or ``warmup`` < 1.
    """

    def __init__(self, step: Step, x: Tensor, y: Tensor, warmup: int = 3) -> None:
        if not (_on_cuda(x) and _on_cuda(y)):
            device = x.device if not _on_cuda(x) else y.device
            raise ValueError(f"CUDA graphs capture CUDA work: x and y must be on a CUDA device, not {device}")
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1 (the first run allocates state), got {warmup}")
        self.x, self.y = x.clone(), y.clone()  # the static inputs that every replay reads
        capture_stream = torch.cuda.current_stream(x.device)
        side = torch.cuda.Stream(x.device)
        side.wait_stream(capture_stream)
        with torch.cuda.stream(side):
            for _ in range(warmup):
                step(self.x, self.y)
        capture_stream.wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = step(self.x, self.y)  # recorded, not run: the first replay runs it

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, ...]:
        """``step(x, y)``, replayed; the returned tensors are overwritten by the next call."""
        if x.shape != self.x.shape or y.shape != self.y.shape:
            raise ValueError(
                f"the graph was captured for x {tuple(self.x.shape)} and y {tuple(self.y.shape)}; got "
                f"{tuple(x.shape)} and {tuple(y.shape)} (run a batch of another size eagerly)"
            )
        self.x.copy_(x, non_blocking=True)
        self.y.copy_(y, non_blocking=True)
        self.graph.replay()
        return self.outputs


class GraphedGradients:
    """``(x, y) -> StepStats`` as :func:`eager_gradients`, with every full batch replayed from one CUDA graph.

    The graph is captured at the first batch of ``batch_size`` samples (its warm-up runs only
    compute gradients, so they change nothing that the run keeps); smaller batches run eagerly.
    After a replay each parameter's ``.grad`` is the graph's gradient again, whatever an eager
    step or a callback assigned to it meanwhile: the optimizer reads the gradients just replayed.

    Args:
        model: on a CUDA device.
        class_weight: the loss's class weights (``--balance weights``), or ``None``.
        batch_size: the samples of a full batch.
        warmup: :class:`GraphedStep`'s.
    """

    def __init__(self, model: Classifier, class_weight: Tensor | None, batch_size: int, warmup: int = 3) -> None:
        self.model, self.params = model, list(model.parameters())
        self.step = gradient_step(model, class_weight)
        self.eager = eager_gradients(model, class_weight)
        self.batch_size, self.warmup = batch_size, warmup
        self.graphed: GraphedStep | None = None
        self.grads: list[Tensor | None] = []

    def __call__(self, x: Tensor, y: Tensor) -> StepStats:
        if len(x) != self.batch_size:
            return self.eager(x, y)
        if self.graphed is None:
            self.graphed = GraphedStep(self.step, x, y, self.warmup)
            self.grads = [p.grad for p in self.params]  # allocated by the capture, rewritten by each replay
        *_, numbers = self.graphed(x, y)
        for p, grad in zip(self.params, self.grads):
            p.grad = grad
        return StepStats.read(numbers, self.model, len(y))
