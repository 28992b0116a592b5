"""A plain mini-batch SGD loop for tests that train a small model without the trainer."""

from __future__ import annotations

import torch

from mlp_torch.optim import SGD


def sgd_fit(model, x, y, epochs, lr=0.1, batch_size=32, seed=0):
    """Mini-batch SGD (momentum 0.9) with the model's own backend, batches in a seeded order; returns the model."""
    optimizer = SGD(model.parameters(), lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad()
            model.compute_gradients(x[idx], y[idx])
            optimizer.step()
    return model
