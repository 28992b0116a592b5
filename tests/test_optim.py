"""The hand-written SGD: the lecture's update, bitwise equal to ``torch.optim.SGD``, and used by the trainer.

Bitwise, not merely close: ``sgd_step`` runs the same tensor operations in the same order as
``torch.optim.SGD``'s single-tensor path (``add`` with ``alpha``, ``mul_``, ``add_``), each of which
rounds the same way, so no float difference can arise on the same device.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from mlp_torch.optim import SGD, sgd_step
from mlp_torch.training.config import TrainConfig
from mlp_torch.training.schedule import build_optimizer

VARIANTS = {
    "plain": {},
    "momentum": {"momentum": 0.9},
    "nesterov": {"momentum": 0.9, "nesterov": True},
    "weight-decay": {"weight_decay": 5e-4},
    "momentum+weight-decay": {"momentum": 0.8, "weight_decay": 1e-2},
    "nesterov+weight-decay": {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
    "dampening": {"momentum": 0.9, "dampening": 0.3},
}


def make_params(device: torch.device) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(*s, generator=g).to(device)) for s in [(5, 7), (5,), (3, 5), (3,)]]


def set_grads(params: list[torch.nn.Parameter], step: int) -> None:
    """The same gradients for every optimizer at a given step (drawn from the step number)."""
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.device)


def clone(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def state_bytes(optimizer: torch.optim.Optimizer) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_sgd_is_bitwise_torch_sgd_across_a_mid_run_state_dict_reload(variant: str, device: torch.device) -> None:
    kwargs = VARIANTS[variant]
    ours_params, ref_params = make_params(device), make_params(device)
    ours = SGD(ours_params, lr=0.1, **kwargs)
    ref = torch.optim.SGD(ref_params, lr=0.1, foreach=False, **kwargs)
    for step in range(3):
        for params, optimizer in ((ours_params, ours), (ref_params, ref)):
            set_grads(params, step)
            optimizer.step()
        assert all(torch.equal(p, q) for p, q in zip(ours_params, ref_params)), f"step {step}"
    # save both mid-way; resume into fresh optimizers over copies of the parameters
    resumed_params, crossed_params = clone(ours_params), clone(ours_params)
    resumed = SGD(resumed_params, lr=0.1, **kwargs)
    resumed.load_state_dict(torch.load(state_bytes(ours), weights_only=True))
    crossed = SGD(crossed_params, lr=0.1, **kwargs)  # torch.optim.SGD's state loads into ours
    crossed.load_state_dict(torch.load(state_bytes(ref), weights_only=True))
    runs = ((ours_params, ours), (ref_params, ref), (resumed_params, resumed), (crossed_params, crossed))
    for step in range(3, 7):
        for params, optimizer in runs:
            set_grads(params, step)
            optimizer.step()
        for params, _ in runs[1:]:
            assert all(torch.equal(p, q) for p, q in zip(ours_params, params)), f"step {step}"
    if kwargs.get("momentum"):
        assert all(
            torch.equal(ours.state[p]["momentum_buffer"], ref.state[q]["momentum_buffer"])
            for p, q in zip(ours_params, ref_params)
        )
    else:
        assert not ours.state_dict()["state"] and not ref.state_dict()["state"]


def test_sgd_follows_a_learning_rate_schedule_like_torch_sgd() -> None:
    ours_params, ref_params = make_params(torch.device("cpu")), make_params(torch.device("cpu"))
    ours = SGD(ours_params, lr=0.5, momentum=0.9, nesterov=True, weight_decay=1e-3)
    ref = torch.optim.SGD(ref_params, lr=0.5, momentum=0.9, nesterov=True, weight_decay=1e-3)
    schedules = [LambdaLR(o, lambda t: 1 / (t + 1)) for o in (ours, ref)]
    for step in range(5):
        for params, optimizer, schedule in zip((ours_params, ref_params), (ours, ref), schedules):
            set_grads(params, step)
            optimizer.step()
            schedule.step()
        assert ours.param_groups[0]["lr"] == ref.param_groups[0]["lr"] == 0.5 / (step + 2)
        assert all(torch.equal(p, q) for p, q in zip(ours_params, ref_params))


def test_sgd_step_is_the_slides_formulas() -> None:
    """w ← w − η g; with momentum b ← μ b + g (b = g first), Nesterov g + μ b; decay g + λ w."""
    w0 = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    g1, g2 = torch.tensor([0.5, 0.25, -1.0], dtype=torch.float64), torch.tensor([-1.0, 2.0, 0.5], dtype=torch.float64)
    lr, mu, lam = 0.1, 0.9, 0.01

    w = w0.clone()
    assert sgd_step(w, g1, None, lr=lr) is None
    torch.testing.assert_close(w, w0 - lr * g1, rtol=1e-15, atol=0)

    w = w0.clone()
    b = sgd_step(w, g1, None, lr=lr, momentum=mu, nesterov=True, weight_decay=lam)
    d1 = g1 + lam * w0  # g ← g + λ w
    assert b is not None
    torch.testing.assert_close(b, d1, rtol=1e-15, atol=0)  # b ← g on the first step
    w1 = w0 - lr * (d1 + mu * d1)  # Nesterov: g ← g + μ b
    torch.testing.assert_close(w, w1, rtol=1e-15, atol=0)
    b = sgd_step(w, g2, b, lr=lr, momentum=mu, nesterov=True, weight_decay=lam)
    d2 = g2 + lam * w1
    torch.testing.assert_close(b, mu * d1 + d2, rtol=1e-15, atol=0)  # b ← μ b + g
    torch.testing.assert_close(w, w1 - lr * (d2 + mu * (mu * d1 + d2)), rtol=1e-15, atol=0)

    g = g1.clone()
    sgd_step(w0.clone(), g, None, lr=lr, momentum=mu, weight_decay=lam)
    assert torch.equal(g, g1)  # the gradient is left as it was


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_sgd_step_in_a_work_tensor_is_the_same_bits_and_leaves_the_gradient(variant: str) -> None:
    kwargs = VARIANTS[variant]
    w0, g = torch.randn(6, 5, generator=torch.Generator().manual_seed(1)), torch.randn(6, 5)
    b0 = torch.randn(6, 5) if kwargs.get("momentum") else None
    plain_w, worked_w = w0.clone(), w0.clone()
    plain_b = sgd_step(plain_w, g, None if b0 is None else b0.clone(), lr=0.1, **kwargs)
    g_before, work = g.clone(), torch.full_like(w0, float("nan"))  # whatever it held is overwritten, never read
    worked_b = sgd_step(worked_w, g, None if b0 is None else b0.clone(), lr=0.1, work=work, **kwargs)
    assert torch.equal(worked_w, plain_w) and torch.equal(g, g_before)
    assert (worked_b is None) == (plain_b is None) and (plain_b is None or torch.equal(worked_b, plain_b))


def test_bad_hyperparameters_are_refused() -> None:
    params = make_params(torch.device("cpu"))
    for kwargs in ({"lr": -1.0}, {"lr": 0.1, "momentum": -0.5}, {"lr": 0.1, "weight_decay": -1.0}):
        with pytest.raises(ValueError):
            SGD(params, **kwargs)
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(params, lr=0.1, nesterov=True)


def test_the_trainer_builds_our_sgd_and_torch_adam() -> None:
    params = make_params(torch.device("cpu"))
    sgd = build_optimizer(TrainConfig(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4), params)
    assert type(sgd) is SGD
    assert {k: sgd.param_groups[0][k] for k in ("lr", "momentum", "nesterov", "weight_decay")} == {
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
    }
    plain = build_optimizer(TrainConfig(momentum=0.0, nesterov=False, weight_decay=0.0), params)
    assert type(plain) is SGD and plain.param_groups[0]["momentum"] == 0.0
    assert type(build_optimizer(TrainConfig(optimizer="adam"), params)) is torch.optim.Adam


@pytest.mark.parametrize("variant", [v for v, kwargs in VARIANTS.items() if kwargs.get("momentum")])
def test_large_parameters_step_block_by_block_to_the_same_bits(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a momentum buffer, a CPU parameter above ``block_elements`` is stepped a block at a time.

    1,073 elements in blocks of 64: sixteen whole blocks and a remainder of 49, whose last elements
    fall off the vectorised loop as the whole tensor's do; the weights, buffers and gradients stay
    torch's bits.
    """
    kwargs = VARIANTS[variant]
    g = torch.Generator().manual_seed(3)
    shapes = [(37, 29), (29,), (640,)]  # above, below and at a multiple of the block
    ours_params = [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]
    ref_params = clone(ours_params)
    ours = SGD(ours_params, lr=0.1, **kwargs)
    ours.block_elements = 64
    ref = torch.optim.SGD(ref_params, lr=0.1, foreach=False, **kwargs)
    sizes: list[int] = []
    real_step = sgd_step

    def counting_step(w: torch.Tensor, *args: object, **kw: object) -> torch.Tensor | None:
        sizes.append(w.numel())
        return real_step(w, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr("mlp_torch.optim.sgd_step", counting_step)
    for step in range(5):
        for params in (ours_params, ref_params):
            set_grads(params, step)
        grads = [p.grad.clone() for p in ours_params if p.grad is not None]
        ours.step()
        ref.step()
        assert all(torch.equal(p, q) for p, q in zip(ours_params, ref_params)), f"step {step}"
        assert all(torch.equal(p.grad, q) for p, q in zip(ours_params, grads))  # the gradients left as they were
    assert all(
        torch.equal(ours.state[p]["momentum_buffer"], ref.state[q]["momentum_buffer"])
        for p, q in zip(ours_params, ref_params)
    )
    # the first step whole (it makes the buffers), then 16 blocks + 1, 29 whole, 10 blocks
    assert sizes[:3] == [1073, 29, 640]
    assert sizes[3:] == 4 * ([64] * 16 + [49] + [29] + [64] * 10)


def test_a_buffer_of_another_shape_is_refused_not_stepped_in_part() -> None:
    w = torch.nn.Parameter(torch.randn(300))
    sgd = SGD([w], lr=0.1, momentum=0.9)
    sgd.block_elements = 64
    w.grad = torch.ones(300)
    sgd.step()
    sgd.state[w]["momentum_buffer"] = torch.zeros(200)  # e.g. a state_dict from another model
    before = w.detach().clone()
    with pytest.raises(RuntimeError, match="size"):
        sgd.step()
    assert torch.equal(w, before)
