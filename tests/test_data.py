"""Synthetic data, the stratified split, standardisation, on-device batches, class weights, metrics."""

from __future__ import annotations

import io

import pytest
import torch

from mlp_torch import metrics
from mlp_torch.data import (
    DataOptions,
    DeviceBatches,
    RawSplits,
    Split,
    Standardizer,
    balance_weights,
    class_weights,
    load_data,
    random_crop,
    random_flip,
    stratified_split,
)
from mlp_torch.data.bundle import LOADERS
from mlp_torch.data.cache import load_cached, save_cached
from mlp_torch.data.options import DATASETS
from mlp_torch.data.synthetic import make_synthetic
from mlp_torch.errors import UsageError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(scope="module")
def synthetic():
    return load_data(DataOptions(dataset="synthetic"))


# --- synthetic -------------------------------------------------------------------------------------


def test_synthetic_is_cifar_shaped_and_deterministic_in_its_seed(synthetic):
    assert synthetic.classes == ["class0", "class1", "class2"]
    assert synthetic.train.x.shape == (2700, 3, 32, 32) and synthetic.train.x.dtype == torch.uint8
    assert synthetic.counts()["test"] == {"class0": 200, "class1": 200, "class2": 200}
    assert synthetic.cache_path is None
    again = load_data(DataOptions(dataset="synthetic", data_root="/does/not/matter"))
    assert torch.equal(again.train.x, synthetic.train.x) and torch.equal(again.val.y, synthetic.val.y)
    other = load_data(DataOptions(dataset="synthetic", seed=1))
    assert not torch.equal(other.train.x, synthetic.train.x)
    named = load_data(DataOptions(dataset="synthetic", classes=["a", "b", "c", "d"], image_size=16))
    assert named.classes == ["a", "b", "c", "d"] and named.train.x.shape[1:] == (3, 16, 16)


def _fit(model: torch.nn.Module, bundle, epochs: int) -> float:
    std = Standardizer.fit(bundle.train.x)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for xb, yb in DeviceBatches(bundle.train.x, bundle.train.y, 128, std, generator=g):
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return (model(std(bundle.test.x)).argmax(1) == bundle.test.y).float().mean().item()


def test_synthetic_is_learnable_linear_well_above_chance_and_an_mlp_higher(synthetic):
    torch.manual_seed(0)
    linear = _fit(torch.nn.Linear(3072, 3), synthetic, epochs=8)
    mlp = _fit(
        torch.nn.Sequential(torch.nn.Linear(3072, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3)), synthetic, epochs=8
    )
    assert 0.5 < linear < 0.95, linear  # chance is 1/3; not separable outright
    assert mlp > linear + 0.08, (linear, mlp)


# --- split ---------------------------------------------------------------------------------------


def test_stratified_split_is_per_class_seeded_and_disjoint():
    y = torch.cat([torch.zeros(5000), torch.ones(5000), torch.full((500,), 2)]).long()
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(3))]
    train, val = stratified_split(y, 0.1, seed=7)
    assert torch.bincount(y[val]).tolist() == [500, 500, 50]
    assert torch.bincount(y[train]).tolist() == [4500, 4500, 450]
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(len(y)))
    same_train, same_val = stratified_split(y, 0.1, seed=7)
    assert torch.equal(val, same_val) and torch.equal(train, same_train)
    assert not torch.equal(val, stratified_split(y, 0.1, seed=8)[1])
    assert len(stratified_split(y, 0.0, seed=7)[1]) == 0


def test_every_dataset_has_a_loader_and_sources_deliver_typed_splits(tmp_path):
    assert set(LOADERS) == set(DATASETS)
    raw = make_synthetic(3, train_per_class=4, test_per_class=2, size=8, seed=0)
    assert isinstance(raw, RawSplits) and isinstance(raw.train, Split) and isinstance(raw.test, Split)
    assert raw.train.x.shape == (12, 3, 8, 8) and raw.train.y.shape == (12,) and len(raw.test) == 6
    path = tmp_path / "cache.pt"
    assert save_cached(path, "key", raw)
    cached = load_cached(path, "key")
    assert cached is not None and torch.equal(cached.train.x, raw.train.x) and torch.equal(cached.test.y, raw.test.y)
    assert load_cached(path, "another key") is None


def test_bundle_val_comes_from_train_and_test_is_untouched(synthetic):
    assert synthetic.counts()["val"] == {"class0": 100, "class1": 100, "class2": 100}
    no_val = load_data(DataOptions(dataset="synthetic", val_fraction=0.0))
    assert torch.equal(no_val.test.x, synthetic.test.x)
    pool = {tuple(img.flatten()[:64].tolist()) for img in no_val.train.x}
    assert all(tuple(img.flatten()[:64].tolist()) in pool for img in synthetic.val.x)


def test_bad_options_are_usage_errors():
    for kw in (
        {"dataset": "mnist"},
        {"val_fraction": 1.0},
        {"balance": "oversample"},
        {"image_size": 0},
        {"augment_crop": -1},
        {"classes": ["cat", "cat"]},
        {"classes": []},
    ):
        with pytest.raises(UsageError):
            DataOptions(**kw)


# --- standardiser ------------------------------------------------------------------------------------


def test_standardizer_uses_train_statistics_only(synthetic):
    std = Standardizer.fit(synthetic.train.x)
    flat = synthetic.train.x.reshape(len(synthetic.train.x), -1).double()
    torch.testing.assert_close(std.mean, flat.mean(0).float(), rtol=0, atol=1e-4)
    torch.testing.assert_close(std.std, flat.std(0).clamp_min(1.0).float(), rtol=1e-5, atol=1e-4)
    everything = torch.cat([synthetic.train.x, synthetic.val.x, synthetic.test.x])
    assert not torch.allclose(Standardizer.fit(everything).mean, std.mean)
    z = std(synthetic.train.x)
    assert z.dtype == torch.float32 and z.shape == (2700, 3072)
    torch.testing.assert_close(z.mean(0), torch.zeros(3072), rtol=0, atol=1e-4)


def test_standardizer_clamps_constant_pixels_and_round_trips_through_weights_only_load(device):
    x = torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8)
    x[:, 0, 0, 0] = 7
    std = Standardizer.fit(x)
    assert std.std[0] == 1.0 and torch.isfinite(std(x)).all()
    buf = io.BytesIO()
    torch.save(std.state_dict(), buf)
    buf.seek(0)
    back = Standardizer.from_state_dict(torch.load(buf, weights_only=True))
    xd = x.to(device)
    out = back(xd)
    assert out.device.type == device.type
    torch.testing.assert_close(out.cpu(), std(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="features"):
        std(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


# --- batches -------------------------------------------------------------------------------------


def _data(n: int, device: torch.device, side: int = 4):
    x = torch.arange(n * 3 * side * side, dtype=torch.int64).remainder(251).to(torch.uint8).view(n, 3, side, side)
    return x.to(device), (torch.arange(n) % 3).to(device)


def test_batches_cover_every_image_once_per_epoch(device):
    x, y = _data(103, device)
    std = Standardizer(torch.zeros(48), torch.ones(48))
    g = torch.Generator(device).manual_seed(0)
    batches = DeviceBatches(x, y, 10, std, generator=g)
    assert len(batches) == 11 and len(DeviceBatches(x, y, 10, std, generator=g, drop_last=True)) == 10
    seen = torch.cat([xb[:, 0] for xb, _ in batches])  # first feature identifies the image
    assert torch.equal(seen.sort().values, x.view(103, -1)[:, 0].float().sort().values)
    assert not torch.equal(seen, x.view(103, -1)[:, 0].float())  # shuffled
    ordered = DeviceBatches(x, y, 10, std, shuffle=False)
    xb, yb = next(iter(ordered))
    assert xb.dtype == torch.float32 and xb.shape == (10, 48) and torch.equal(yb, y[:10])
    assert xb.device.type == device.type


def test_all_randomness_comes_from_the_generator(device):
    x, y = _data(64, device)
    std = Standardizer(torch.zeros(48), torch.ones(48))
    kwargs = dict(augment_flip=True, augment_crop=1, sample_weights=class_weights(y, 3))
    g = torch.Generator(device).manual_seed(5)
    state = g.get_state()
    torch.manual_seed(0)
    first = [(xb.clone(), yb.clone()) for xb, yb in DeviceBatches(x, y, 16, std, generator=g, **kwargs)]
    global_after = torch.rand(1)
    g.set_state(state)
    torch.manual_seed(123)  # a different global state must not matter
    second = list(DeviceBatches(x, y, 16, std, generator=g, **kwargs))
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(first, second))
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), global_after)  # the global generator was not drawn from


def test_flip_mirrors_some_images_and_leaves_the_rest(device):
    x, _ = _data(200, device, side=5)
    out = random_flip(x, torch.Generator(device).manual_seed(0))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    assert (same | mirrored).all() and 50 < mirrored.sum() < 150


@pytest.mark.parametrize(("n", "channels", "h", "w", "pad"), [(40, 3, 6, 6, 2), (30, 1, 3, 7, 2), (1, 3, 4, 4, 1)])
def test_crop_is_a_window_of_the_zero_padded_image(device, n, channels, h, w, pad):
    x = torch.randint(1, 256, (n, channels, h, w), generator=torch.Generator().manual_seed(n), dtype=torch.uint8)
    x = x.to(device)  # no zeros inside: only the padding is 0, and pad < h, w: every window shows some of the image
    out = random_crop(x, pad, torch.Generator(device).manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    offsets = set()
    for i in range(len(x)):
        hits = [
            (top, left)
            for top in range(2 * pad + 1)
            for left in range(2 * pad + 1)
            if torch.equal(out[i], padded[i, :, top : top + h, left : left + w])
        ]
        assert len(hits) == 1, f"image {i} is not one window of its padded self"
        offsets.add(hits[0])
    assert len(offsets) > min(5, n - 1)


def test_crop_and_flip_of_an_empty_batch_are_empty(device):
    x = torch.zeros(0, 3, 4, 4, dtype=torch.uint8, device=device)
    g = torch.Generator(device).manual_seed(0)
    assert random_crop(x, 2, g).shape == x.shape and random_flip(x, g).shape == x.shape


def test_balanced_sampling_draws_classes_equally(device):
    y = torch.cat([torch.zeros(1000), torch.ones(1000), torch.full((100,), 2)]).long().to(device)
    x = torch.zeros(len(y), 3, 2, 2, dtype=torch.uint8, device=device)
    std = Standardizer(torch.zeros(12), torch.ones(12))
    opts = DataOptions(dataset="synthetic", balance="sample")
    loss_w, sample_w = balance_weights(opts, y, 3)
    assert loss_w is None
    batches = DeviceBatches(x, y, 256, std, generator=torch.Generator(device).manual_seed(0), sample_weights=sample_w)
    drawn = torch.cat([yb for _, yb in batches])
    assert len(drawn) == len(y)
    share = torch.bincount(drawn, minlength=3).float() / len(drawn)
    torch.testing.assert_close(share.cpu(), torch.full((3,), 1 / 3), rtol=0, atol=0.04)


def test_class_weights_are_inverse_frequency_with_mean_one():
    y = torch.tensor([0] * 100 + [1] * 100 + [2] * 10)
    w = class_weights(y, 3)
    torch.testing.assert_close(w.mean(), torch.tensor(1.0))
    torch.testing.assert_close(w[2] / w[0], torch.tensor(10.0))
    assert class_weights(torch.tensor([0, 0, 2]), 3)[1] == 0
    loss_w, sample_w = balance_weights(DataOptions(balance="weights"), y, 3)
    assert sample_w is None and torch.equal(loss_w, w)
    assert balance_weights(DataOptions(), y, 3) == (None, None)


# --- metrics -------------------------------------------------------------------------------------


def test_confusion_matrix_and_accuracies():
    target = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    pred = torch.tensor([0, 0, 0, 1, 1, 1, 0, 1, 0, 0])
    cm = metrics.confusion_matrix(pred, target, 3)
    assert cm.dtype == torch.int64
    assert cm.tolist() == [[3, 1, 0], [1, 3, 0], [2, 0, 0]]  # rows = true class
    torch.testing.assert_close(metrics.per_class_accuracy(cm), torch.tensor([0.75, 0.75, 0.0], dtype=torch.float64))
    assert metrics.accuracy(cm) == pytest.approx(0.6)
    assert metrics.balanced_accuracy(cm) == pytest.approx(0.5)  # plain accuracy hides the missed class
    empty_class = metrics.confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1]), 3)
    assert metrics.balanced_accuracy(empty_class) == 1.0  # a class with no images does not count
    assert torch.isnan(metrics.per_class_accuracy(empty_class)[2])
