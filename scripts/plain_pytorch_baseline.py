"""The job ``mlp-torch train`` does, written as an idiomatic plain-PyTorch script: the yardstick of
``mlp-torch bench --end-to-end``.

ImageFolder + DataLoader + torchvision transforms (random 2-pixel crops and flips, ToTensor,
Normalize) + ``nn.Sequential`` (3072-512-C, sigmoid), SGD with Nesterov momentum 0.9 and weight
decay 5e-4, one epoch of linear warm-up then a cosine schedule stepped per batch, a validation
split held out of train (the best epoch's weights saved), the test split evaluated once at the end:
the same settings as ``mlp-torch train``'s defaults. Before training it tries each DataLoader
worker count on a few batches and keeps the fastest, as a user tuning the script would.

    python scripts/plain_pytorch_baseline.py --data-root ../shared/data/cifar10-jpg --classes cat,dog --epochs 3

Writes one JSON object (``--json PATH``, ``-`` for stdout): per-epoch seconds (train + validation
+ checkpoint), the worker count chosen and the timings that chose it, the test accuracy. Needs
only torch and torchvision; it does not import mlp_torch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--data-root", type=Path, required=True, help="folder with train/<class>/ and test/<class>/")
    parser.add_argument("--classes", default="cat,dog", help="comma-separated class folders, labelled in this order")
    parser.add_argument("--epochs", type=int, default=30, help="passes over the training split")
    parser.add_argument("--batch-size", type=int, default=128, help="images per SGD step")
    parser.add_argument("--lr", type=float, default=0.05, help="peak learning rate")
    parser.add_argument("--hidden", type=int, default=512, help="hidden units")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="fraction of train held out for validation")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=None,
        help="DataLoader worker counts to try (default: 0 up to the CPU count); the fastest is used",
    )
    parser.add_argument("--probe-batches", type=int, default=20, help="batches each worker count is timed on")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the initialisation and the order")
    parser.add_argument("--json", default=None, help="write the result here as JSON (- = stdout)")
    args = parser.parse_args(argv)
    for flag, value, low in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1)):
        if value < low:
            parser.error(f"{flag} must be at least {low}, got {value}")
    if not 0 <= args.val_fraction < 1:
        parser.error(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.workers is not None and min(args.workers) < 0:
        parser.error("--workers counts must be at least 0")
    for split in ("train", "test"):
        for name in args.classes.split(","):
            if not (args.data_root / split / name).is_dir():
                parser.error(f"{args.data_root / split / name} is not a folder: pass --data-root with train/ and test/")
    return args


def image_folder(root: Path, classes: list[str], transform: Any) -> Any:
    """ImageFolder restricted to ``classes``, labelled in their order."""
    from torchvision import datasets

    class Chosen(datasets.ImageFolder):
        def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
            return classes, {name: i for i, name in enumerate(classes)}

    return Chosen(str(root), transform=transform)


def channel_stats(dataset: Any) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the (un-augmented) training images, as Normalize wants them."""
    loader = DataLoader(dataset, batch_size=1000)
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    for x, _ in loader:
        total += x.double().sum((0, 2, 3))
        total_sq += x.double().square().sum((0, 2, 3))
        count += x.numel() // 3
    mean = total / count
    return mean.tolist(), (total_sq / count - mean.square()).sqrt().tolist()


def warmup_cosine(epochs: int, steps_per_epoch: int) -> Any:
    total, warmup = epochs * steps_per_epoch, min(steps_per_epoch, epochs * steps_per_epoch)

    def factor(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min((t - warmup) / max(total - warmup, 1), 1.0)))

    return factor


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            correct += (model(x).argmax(1) == y).sum().item()
            seen += len(y)
    model.train()
    return correct / max(seen, 1)


def best_worker_count(
    dataset: Any, candidates: list[int], batch_size: int, batches: int
) -> tuple[int, dict[int, float]]:
    """The worker count that delivers ``batches`` shuffled batches fastest (start-up included)."""
    seconds = {}
    for workers in candidates:
        started = time.perf_counter()
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
        for i, _ in enumerate(loader):
            if i + 1 >= batches:
                break
        seconds[workers] = time.perf_counter() - started
        del loader
    return min(seconds, key=seconds.__getitem__), seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from torchvision import transforms

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    classes = args.classes.split(",")

    plain = image_folder(args.data_root / "train", classes, transforms.ToTensor())
    order = torch.randperm(len(plain), generator=torch.Generator().manual_seed(args.seed)).tolist()
    n_val = int(len(plain) * args.val_fraction)
    val_idx, train_idx = order[:n_val], order[n_val:]
    mean, std = channel_stats(Subset(plain, train_idx))
    normalize = transforms.Normalize(mean, std)
    side = plain[0][0].shape[-1]  # the images' size, from the data
    augment = transforms.Compose(
        [transforms.RandomCrop(side, padding=2), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
    )
    evaluation = transforms.Compose([transforms.ToTensor(), normalize])
    train_set = Subset(image_folder(args.data_root / "train", classes, augment), train_idx)
    val_set = Subset(image_folder(args.data_root / "train", classes, evaluation), val_idx)
    test_set = image_folder(args.data_root / "test", classes, evaluation)

    candidates = args.workers if args.workers is not None else list(range((os.cpu_count() or 1) + 1))
    workers, probe = best_worker_count(train_set, candidates, args.batch_size, args.probe_batches)
    keep = {"num_workers": workers, "persistent_workers": workers > 0}
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, **keep)
    val_loader = DataLoader(val_set, batch_size=1000, **keep)
    test_loader = DataLoader(test_set, batch_size=1000, num_workers=workers)

    model = nn.Sequential(
        nn.Flatten(), nn.Linear(3 * side * side, args.hidden), nn.Sigmoid(), nn.Linear(args.hidden, len(classes))
    ).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(args.epochs, len(train_loader)))
    loss_fn = nn.CrossEntropyLoss()

    epoch_seconds, best_val = [], -1.0
    with tempfile.TemporaryDirectory() as tmp:
        best_path = Path(tmp) / "best.pt"
        for epoch in range(args.epochs):
            started = time.perf_counter()
            for x, y in train_loader:
                x, y = x.to(device), y.to(device)
                optimizer.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                optimizer.step()
                scheduler.step()
            val_accuracy = evaluate(model, val_loader, device) if n_val else 0.0
            if not n_val or val_accuracy > best_val:  # without validation the last epoch is kept
                best_val = val_accuracy
                torch.save(model.state_dict(), best_path)
            epoch_seconds.append(time.perf_counter() - started)
            print(
                f"epoch {epoch + 1}/{args.epochs}  loss {loss.item():.4f}  val {100 * val_accuracy:.2f} %  "
                f"{epoch_seconds[-1]:.2f} s",
                file=sys.stderr,
            )
        model.load_state_dict(torch.load(best_path, weights_only=True))
    result = {
        "epoch_seconds": statistics.median(epoch_seconds),
        "epoch_seconds_each": epoch_seconds,
        "workers": workers,
        "worker_probe_seconds": {str(k): v for k, v in probe.items()},
        "accuracy": evaluate(model, test_loader, device),
        "best_val_accuracy": best_val,
        "threads": torch.get_num_threads(),
        "train_images": len(train_set),
    }
    text = json.dumps(result, indent=2)
    if args.json == "-":
        print(text)
    elif args.json:
        Path(args.json).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
