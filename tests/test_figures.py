"""The lecture's pictures: the activation figure and decision boundaries, rendered and read back."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image
from sgd_loop import sgd_fit

from mlp_torch import functional as mf
from mlp_torch.data import DataOptions, Standardizer, load_data
from mlp_torch.models import Perceptron, build_model
from mlp_torch.training.figures import (
    activation_figure,
    class_colours,
    decision_boundary_figure,
    decision_boundary_strip,
    describe_model,
    predict_grid,
)


def pixels(fig: Figure) -> np.ndarray:
    """The rendered figure as an (H, W, 3) uint8 array."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()  # type: ignore[attr-defined]


def has_colour(image: np.ndarray, rgb: tuple[float, float, float], at_least: int) -> bool:
    """Whether at least ``at_least`` pixels have the colour ``rgb`` (to within rounding to 8 bits)."""
    target = np.round(np.array(rgb) * 255)
    return int((np.abs(image.astype(float) - target).max(axis=2) <= 1).sum()) >= at_least


def png_size(fig: Figure, dpi: int) -> tuple[int, int]:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return Image.open(io.BytesIO(buffer.getvalue())).size


def contour_segments(fig: Figure, level: str | None = None) -> list[np.ndarray]:
    """The vertices of the probability contours drawn on the figure's axes (all levels, or ``level``)."""
    gids = {f"probability-{level}"} if level else {"probability-0.1", "probability-0.5", "probability-0.9"}
    paths = [path for artist in fig.axes[0].collections if artist.get_gid() in gids for path in artist.get_paths()]
    return [np.asarray(path.vertices) for path in paths if len(path.vertices)]


# ---------------------------------------------------------------------------------------------
# The activation figure
# ---------------------------------------------------------------------------------------------


def test_activation_figure_is_labelled_and_sized():
    fig = activation_figure()
    assert isinstance(fig, Figure) and len(fig.axes) == 8
    assert tuple(fig.get_size_inches()) == (13.0, 6.0) and png_size(fig, 100) == (1300, 600)
    titles = [ax.get_title() for ax in fig.axes]
    for name in ("Step", "Sigmoid", "Tanh", "ReLU"):
        assert any(title.startswith(name) for title in titles[:4]), titles
    assert "σ'(a) = σ(a)(1 − σ(a))" in titles[5] and "tanh'(a) = 1 − tanh²(a)" in titles[6]
    assert fig.axes[0].get_ylabel() == "h = f(a)" and "backward" in fig.axes[4].get_ylabel()
    assert all(ax.get_xlabel() == "a" for ax in fig.axes[4:])


def test_activation_figure_plots_our_backward(monkeypatch):
    """The derivative drawn is the one our Functions' backward returns: break it and the picture changes."""
    fig = activation_figure(-4, 4, 81)
    a, dsigmoid = (np.asarray(v) for v in fig.axes[5].lines[0].get_data())
    s = 1 / (1 + np.exp(-a))
    np.testing.assert_allclose(dsigmoid, s * (1 - s), rtol=1e-12)
    _, drelu = fig.axes[7].lines[0].get_data()
    np.testing.assert_array_equal(drelu, (a > 0).astype(float))
    _, dstep = fig.axes[4].lines[0].get_data()
    np.testing.assert_array_equal(dstep, np.zeros_like(a))

    original = mf.SigmoidFunction.backward
    monkeypatch.setattr(mf.SigmoidFunction, "backward", staticmethod(lambda ctx, dh: 2 * original(ctx, dh)))
    _, broken = activation_figure(-4, 4, 81).axes[5].lines[0].get_data()
    np.testing.assert_allclose(broken, 2 * s * (1 - s), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Decision boundaries
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spiral():
    bundle = load_data(DataOptions(dataset="spiral", samples=600))
    return bundle, Standardizer.fit(bundle.train.x)


def test_decision_boundary_shows_every_class_region_and_point_colour(spiral):
    bundle, std = spiral
    model = sgd_fit(build_model("mlp", 2, 3, [64], "relu", seed=0), std(bundle.train.x), bundle.train.y, epochs=15)
    fig = decision_boundary_figure(
        model, bundle.train.x, bundle.train.y, bundle.classes, std, grid=120, title="epoch 15"
    )
    assert tuple(fig.get_size_inches()) == (7.2, 5.6) and png_size(fig, 100) == (720, 560)
    image = pixels(fig)
    points, regions = class_colours(3)
    for c in range(3):
        assert has_colour(image, regions[c], at_least=2000), f"no region of class {c}"
        assert has_colour(image, points[c], at_least=50), f"no points of class {c}"
    ax = fig.axes[0]
    assert ax.get_xlabel() == "x₁" and ax.get_ylabel() == "x₂"
    assert ax.get_title().startswith("MLP 2-64-3 (relu): accuracy") and ax.get_title().endswith("\nepoch 15")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [f"{name} ({n})" for name, n in zip(bundle.classes, bundle.train.counts(3))]
    # the window covers the raw (unstandardised) points with room to spare
    (left, right), (bottom, top) = ax.get_xlim(), ax.get_ylim()
    low, high = bundle.train.x.min(0).values, bundle.train.x.max(0).values
    assert left < low[0] and right > high[0] and bottom < low[1] and top > high[1]
    assert contour_segments(fig) == []  # a softmax output has no probability contour


def test_predict_grid_is_the_models_argmax_in_raw_units():
    model = build_model("softmax", 2, 2, seed=0)
    with torch.no_grad():
        model.layers[0].weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))  # class 1 where x₁ > 0
        model.layers[0].bias.zero_()
    std = Standardizer(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]))  # the model sees x₁ − 2
    xs, ys, classes, probability = predict_grid(model, (-1.0, 5.0), (0.0, 1.0), grid=7, standardizer=std)
    assert classes.shape == (7, 7) and probability is None
    assert torch.equal(classes, (xs > 2).long().expand(7, 7))  # the boundary is x₁ = 2 in raw units


@pytest.mark.parametrize("backend", ["builtin", "custom", "manual"])
@pytest.mark.parametrize("kind", ["softmax", "perceptron", "mlp"])
def test_every_model_kind_and_backend_draws(kind, backend, spiral):
    bundle, std = spiral
    x, y = std(bundle.train.x), bundle.train.y
    if kind == "perceptron":
        model = Perceptron(2, 3, backend=backend)
        model.fit(x, y, epochs=3, shuffle_seed=0)
    else:
        model = build_model(kind, 2, 3, [16], "tanh", backend=backend, seed=0)
        sgd_fit(model, x, y, epochs=3)
    fig = decision_boundary_figure(model, bundle.train.x, bundle.train.y, bundle.classes, std, grid=60)
    _, _, classes, _ = predict_grid(model, fig.axes[0].get_xlim(), fig.axes[0].get_ylim(), 60, std)
    image = pixels(fig)
    _, regions = class_colours(3)
    for c in classes.unique().tolist():
        assert has_colour(image, regions[c], at_least=200)
    assert describe_model(model).split()[0] in ("linear", "perceptron", "MLP")


def test_binary_perceptron_and_a_double_model_on_the_device(device):
    bundle = load_data(DataOptions(dataset="linear", samples=200))
    perceptron = Perceptron(2, 2).double().to(device)
    perceptron.fit(bundle.train.x.double().to(device), bundle.train.y.to(device), epochs=20, shuffle_seed=0)
    fig = decision_boundary_figure(perceptron, bundle.train.x.to(device), bundle.train.y.to(device), bundle.classes)
    assert "perceptron 2-1: accuracy 100.0 %" in fig.axes[0].get_title()
    _, regions = class_colours(2)
    assert all(has_colour(pixels(fig), regions[c], at_least=2000) for c in range(2))


def test_sigmoid_output_draws_the_half_probability_line():
    """Logistic regression with p = x₁: the line ŷ = σ(p) = 0.5 is the x₂ axis."""
    model = build_model("softmax", 2, 2, seed=0, output="sigmoid")
    with torch.no_grad():
        model.layers[0].weight.copy_(torch.tensor([[1.0, 0.0]]))
        model.layers[0].bias.zero_()
    x = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-0.5, 0.7], [0.6, -0.3]])
    y = torch.tensor([0, 1, 0, 1])
    fig = decision_boundary_figure(model, x, y, ["left", "right"], grid=101)
    segments = contour_segments(fig, "0.5")
    assert segments and len(contour_segments(fig)) == len(segments), "no contour drawn, or more than the one"
    vertices = np.concatenate(segments)
    # ŷ = 0.5 at x₁ = 0; 0.1 and 0.9 at x₁ = ∓ln 9 lie outside this window, so only one line is drawn
    np.testing.assert_allclose(vertices[:, 0], 0.0, atol=1e-9)
    (bottom, top) = fig.axes[0].get_ylim()
    assert vertices[:, 1].min() == pytest.approx(bottom) and vertices[:, 1].max() == pytest.approx(top)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["left (2)", "right (2)", "ŷ = σ(p) = 0.5"]
    assert "logistic regression 2-1: accuracy 100.0 %" in fig.axes[0].get_title()


def test_a_trained_sigmoid_mlp_on_xor_has_its_contours():
    bundle = load_data(DataOptions(dataset="xor", samples=400))
    std = Standardizer.fit(bundle.train.x)
    model = build_model("mlp", 2, 2, [4], "tanh", seed=0, output="sigmoid", backend="manual")
    sgd_fit(model, std(bundle.train.x), bundle.train.y, epochs=20)
    fig = decision_boundary_figure(model, bundle.train.x, bundle.train.y, bundle.classes, std, grid=80)
    assert contour_segments(fig, "0.5") and contour_segments(fig, "0.1") and contour_segments(fig, "0.9")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[2:] == ["ŷ = σ(p) = 0.1", "ŷ = σ(p) = 0.5", "ŷ = σ(p) = 0.9"]
    _, regions = class_colours(2)
    assert all(has_colour(pixels(fig), regions[c], at_least=5000) for c in range(2))


def test_a_strip_draws_each_model_in_its_panel_with_one_legend(spiral):
    """One run at a few epochs: panel k is model k's regions and accuracy, as its own figure has them."""
    bundle, std = spiral
    x, y = std(bundle.train.x), bundle.train.y
    untrained = build_model("mlp", 2, 3, [16], "tanh", seed=0)
    trained = sgd_fit(build_model("mlp", 2, 3, [16], "tanh", seed=0), x, y, epochs=20)
    fig = decision_boundary_strip([untrained, trained], ["epoch 0", "epoch 20"], bundle.train.x, y, bundle.classes, std)
    assert len(fig.axes) == 2 and sum(ax.get_legend() is not None for ax in fig.axes) == 1
    for ax, model in zip(fig.axes, (untrained, trained)):
        alone = decision_boundary_figure(model, bundle.train.x, y, bundle.classes, std).axes[0].get_title()
        assert ax.get_title().split(": ")[1] == alone.split("accuracy ")[1].split(" on")[0]  # e.g. "97.3 %"
        shown = ax.get_images()[0].get_array()
        _, _, classes, _ = predict_grid(model, ax.get_xlim(), ax.get_ylim(), 300, std)
        assert np.array_equal(np.asarray(shown), classes.numpy())
    assert [ax.get_title().split(":")[0] for ax in fig.axes] == ["epoch 0", "epoch 20"]
    with pytest.raises(ValueError, match="one title per model"):
        decision_boundary_strip([trained], ["a", "b"], bundle.train.x, y, bundle.classes, std)


def test_tensorboard_takes_the_figures(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    model = build_model("mlp", 2, 2, [4], "tanh", seed=0)
    x, y = torch.randn(50, 2), torch.randint(0, 2, (50,))
    writer = SummaryWriter(str(tmp_path))
    for epoch in (0, 5):
        writer.add_figure("decision_boundary", decision_boundary_figure(model, x, y, ["a", "b"], grid=40), epoch)
    writer.add_figure("activations", activation_figure(), 0)
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert set(events.Tags()["images"]) == {"decision_boundary", "activations"}
    shown = events.Images("decision_boundary")
    assert [e.step for e in shown] == [0, 5] and (shown[0].width, shown[0].height) == (720, 560)


@pytest.mark.parametrize(
    "x,y,names,match",
    [
        (torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), ["a", "b"], r"2-D points \(N, 2\); got \(4, 3\)"),
        (torch.zeros(4, 2), torch.zeros(3, dtype=torch.long), ["a", "b"], "as many labels as points"),
        (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), ["a", "b"], "some points"),
        (torch.zeros(2, 2), torch.tensor([0, 2]), ["a", "b"], "a label 2 has no name among 2 class names"),
    ],
)
def test_bad_input(x, y, names, match):
    with pytest.raises(ValueError, match=match):
        decision_boundary_figure(build_model("softmax", 2, 2, seed=0), x, y, names)
