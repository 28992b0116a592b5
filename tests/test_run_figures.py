"""The figures of a training run: what they draw, read back from the matplotlib objects and the pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlp_torch.training.run_figures import (
    MAX_UNITS,
    TILE_GAP,
    TILE_PIXELS,
    confusion_figure,
    figure_to_image,
    gradient_norms_figure,
    labelled_tiles_figure,
    templates_image,
    tiles,
)

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_confusion_figure_names_both_axes_and_writes_counts_and_row_shares():
    counts = torch.arange(100).reshape(10, 10) % 17 + torch.eye(10, dtype=torch.long) * 50
    fig = confusion_figure(counts, CIFAR10, "validation, epoch 3")
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == CIFAR10
    assert [t.get_text() for t in ax.get_yticklabels()] == CIFAR10
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert len(cells) == 100
    for (true, predicted), text in cells.items():
        row = counts[true].double()
        assert text == f"{int(counts[true, predicted])}\n{100 * row[predicted] / row.sum():.0f} %"
    image = figure_to_image(fig)
    assert image.dtype == torch.uint8 and image.shape[0] == 3 and min(image.shape[1:]) >= 600, "readable at 10 classes"


def test_confusion_figure_of_two_classes_is_at_least_300_pixels_and_refuses_a_wrong_shape():
    image = figure_to_image(confusion_figure([[400, 100], [0, 500]], ["cat", "dog"], "test"))
    assert min(image.shape[1:]) >= 300
    with pytest.raises(ValueError, match="2×2"):
        confusion_figure([[1, 2, 3]], ["cat", "dog"], "test")


def test_tiles_are_min_max_scaled_each_on_its_own():
    rows = torch.randn(5, 3 * 4 * 4) * torch.arange(1, 6)[:, None]
    images = tiles(rows, 4)
    assert images.shape == (5, 3, 4, 4)
    assert torch.allclose(images.amin(dim=(1, 2, 3)), torch.zeros(5)) and torch.allclose(
        images.amax(dim=(1, 2, 3)), torch.ones(5)
    )


def test_mlp_templates_are_the_units_that_changed_most_in_a_padded_grid():
    size, units = 4, 100
    initial = torch.randn(units, 3 * size * size)
    change = torch.randn(units, 3 * size * size)
    change *= torch.linspace(0.01, 1, units)[:, None] / change.norm(dim=1, keepdim=True)  # unit 99 changed most
    image = templates_image(initial + change, initial, size, ["a", "b"])
    assert image is not None and image.dtype == torch.uint8
    scale = TILE_PIXELS // size
    tile, pad = size * scale, TILE_GAP
    assert image.shape == (3, pad + 8 * (tile + pad), pad + 8 * (tile + pad)), f"{MAX_UNITS} tiles, 8 a row"
    first = image[:, pad : pad + tile : scale, pad : pad + tile : scale].float() / 255  # the first tile, 1:1
    expected = tiles(change[99:], size)[0]
    assert (first - expected).abs().max() <= 1 / 255 + 1e-6
    assert image[:, :pad].float().mean() == 255, "white padding"


def test_linear_templates_are_one_labelled_tile_per_class():
    fig = labelled_tiles_figure(tiles(torch.randn(10, 3 * 8 * 8), 8), CIFAR10)
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels[:10] == CIFAR10 and "W − W_init" in labels[10]
    initial = torch.randn(10, 192)
    assert templates_image(initial + 1, initial, 8, CIFAR10) is not None
    binary = templates_image(torch.randn(1, 192), torch.zeros(1, 192), 8, ["cat", "dog"])
    assert binary is not None and binary.shape[2] < binary.shape[1] * 2, "one tile: dog − cat"


def test_no_templates_for_inputs_that_are_not_images():
    assert templates_image(torch.randn(16, 2), torch.zeros(16, 2), 32, ["a", "b"]) is None


def test_gradient_norms_figure_is_log_scale_with_one_line_per_epoch():
    norms = [[1e-4 * (e + 1), 1e-2, 1.0] for e in range(4)]
    fig = gradient_norms_figure(norms, first_epoch=3)
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    assert len(ax.lines) == 4
    np.testing.assert_allclose(ax.lines[-1].get_ydata(), norms[-1])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["epoch 3", "epoch 6"]
    assert "layer 0 / layer 2 = 0.0004" in ax.get_title()
