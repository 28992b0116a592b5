"""A training step captured once as a CUDA graph and replayed: the building block for ``--cuda-graphs``.

NOT YET RUN ON A GPU: written from PyTorch's recipe and tested on the CPU side only (its CUDA tests
skip without a GPU). Run ``pytest tests/test_cuda_graph.py`` on a CUDA machine before relying on it.

On a GPU a small MLP's step is launch-bound: a few dozen kernels of microseconds each, every one
launched from Python. A CUDA graph records the kernels of one step once and replays them all with
a single launch. PyTorch's recipe ("whole-network capture" in the ``torch.cuda.graphs`` notes):

1. static inputs: each replay reads the same tensors, so a batch is copied into them;
2. a few warm-up steps on a side stream, which create what the first step creates (the
   optimizer's state, autograd's buffers) outside the capture;
3. the capture of one step, starting from ``zero_grad(set_to_none=True)``: backward then
   allocates the gradients from the graph's memory pool, and every replay writes them afresh;
4. replays.

A captured step cannot read a tensor on the host (``.item()``, ``.tolist()``, a Python ``if`` on
a value), change shape (an epoch's last, smaller batch takes the eager step), or see a new
Python-float learning rate (give the optimizer a tensor ``lr`` and change it in place). The warm-up
steps are real steps: they train on the batch given to the constructor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..models.base import Classifier

Step = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]

__all__ = ["GraphedStep", "Step", "training_step"]


def training_step(model: Classifier, optimizer: torch.optim.Optimizer) -> Step:
    """``(x, y) -> (loss, logits)``: ``zero_grad(set_to_none=True)``, the model's backend's gradients, ``step()``."""

    def step(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        optimizer.zero_grad(set_to_none=True)
        loss, logits = model.compute_gradients(x, y)
        optimizer.step()
        return loss, logits

    return step


def _on_cuda(t: Tensor) -> bool:
    return t.is_cuda


class GraphedStep:
    """``step`` captured once on CUDA; calling the object copies a batch in and replays it.

    Args:
        step: a training step such as :func:`training_step`'s, which reads only its arguments.
        x: an example batch of inputs, on a CUDA device; every later batch must have its shape.
        y: the example batch's targets.
        warmup: real steps run on ``(x, y)`` before the capture (at least 1).

    Raises:
        ValueError: ``x`` or ``y`` not on CUDA, or ``warmup`` < 1.
    """

    def __init__(self, step: Step, x: Tensor, y: Tensor, warmup: int = 3) -> None:
        if not (_on_cuda(x) and _on_cuda(y)):
            device = x.device if not _on_cuda(x) else y.device
            raise ValueError(f"CUDA graphs capture CUDA work: x and y must be on a CUDA device, not {device}")
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1 (the first step allocates state), got {warmup}")
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
            self.loss, self.logits = step(self.x, self.y)  # recorded, not run: the first replay runs it

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """One step on ``(x, y)``; the returned loss and logits are overwritten by the next call."""
        if x.shape != self.x.shape or y.shape != self.y.shape:
            raise ValueError(
                f"the graph was captured for x {tuple(self.x.shape)} and y {tuple(self.y.shape)}; got "
                f"{tuple(x.shape)} and {tuple(y.shape)} (run a batch of another size eagerly)"
            )
        self.x.copy_(x, non_blocking=True)
        self.y.copy_(y, non_blocking=True)
        self.graph.replay()
        return self.loss, self.logits
