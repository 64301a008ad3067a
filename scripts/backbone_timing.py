"""Measure a backbone's training: epochs vs wall time vs fine-class test accuracy (CPU).

Trains the architecture exactly as ``fabench.models.trained`` does (AdamW, one-cycle schedule,
seeded), with the test accuracy measured after every epoch (the schedule is the full run's, so an
intermediate epoch is not a shorter run). Prints one line per epoch; nothing is cached.

    .venv/bin/python scripts/backbone_timing.py --task mnist5v5 --backbone cnn --epochs 3 \
        --data-dir /work/shared/data --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from fabench import registry
from fabench.models.cnn import channel_stats, resnet18_cifar, small_cnn
from fabench.models.trained import accuracy, train_fine_labels
from fabench.types import FitContext  # noqa: F401  (documents the context the real path uses)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="mnist5v5")
    ap.add_argument("--backbone", default="cnn", choices=["cnn", "resnet18"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.003)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--augment", default="none")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = registry.tasks.get(args.task)
    data = task.load(dict(task.meta.params), seed=args.seed, data_dir=args.data_dir)
    shape = data.input_shape
    mean, std = channel_stats(data.x_train)
    torch.manual_seed(args.seed)
    if args.backbone == "cnn":
        net = small_cnn(shape, data.num_classes, width=args.width, mean=mean, std=std)
    else:
        net = resnet18_cifar(shape, data.num_classes, mean=mean, std=std)
    t0 = time.perf_counter()
    print(f"{args.task} {args.backbone} width={args.width} epochs={args.epochs} lr={args.lr} "
          f"bs={args.batch_size} augment={args.augment} n_train={len(data.x_train)} threads={args.threads}",
          flush=True)

    def progress(stage: str, done: int, total: int) -> None:
        if done:
            t = time.perf_counter() - t0
            acc = accuracy(net, data.x_test, data.fine_test)
            print(f"epoch {done}/{total}: {t:.0f}s (train), test accuracy {acc:.4f}", flush=True)

    train_fine_labels(net, data, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                      augmentation=args.augment, seed=args.seed, progress=progress)
    print(f"total {time.perf_counter() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
