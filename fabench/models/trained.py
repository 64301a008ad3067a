"""Training a backbone on the task's fine labels, once: the result is cached on disk.

The backbone (Li, Pan, Lyu, Li, ICLR 2025, real-data experiments: heads on learned features) is trained with
AdamW and a cosine learning-rate schedule on cross entropy over the ``k`` fine classes, seeded.
Its weights are cached under a key that hashes the architecture name, every backbone parameter,
the seed, a content fingerprint of the training images and labels, and
:data:`BACKBONE_CODE_VERSION`; so ``binary``, ``fine`` and ``robust`` on the same task reuse one
trained backbone (and a new split of the same data, such as MNIST parity, too: the fine labels
are the same).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fabench import cache
from fabench.errors import ConfigError
from fabench.device import describe_device, module_device, training_threads
from fabench.models.cnn import FeatureNet
from fabench.types import FitContext, ProgressFn, TaskData, no_progress

log = logging.getLogger(__name__)

#: Bump when training code or architectures change: old cache entries are then ignored. 2: a CPU
#: trains at :data:`fabench.device.TRAINING_THREADS` threads (before, at the process's count, which
#: changes the weights; entries of version 1 may have been trained at any count).
BACKBONE_CODE_VERSION = 2

AUGMENTATIONS = ("none", "crop", "crop+flip")


def data_fingerprint(data: TaskData) -> dict[str, Any]:
    """What identifies the training data of a backbone: content hashes, not names."""
    return {
        "x_train": cache.tensor_fingerprint(data.x_train),
        "fine_train": cache.tensor_fingerprint(data.fine_train),
        "num_classes": data.num_classes,
    }


def augment(x: torch.Tensor, mode: str, *, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random translations by up to ``pad`` pixels (``crop``) and horizontal flips (``flip``)."""
    if mode == "none":
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    if "flip" in mode:
        flip = torch.rand(n, generator=generator) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out


@torch.no_grad()
def accuracy(net: nn.Module, x: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 512) -> float:
    """Fine-class accuracy of ``net`` (in eval mode) on ``x`` (batches go to ``net``'s device)."""
    if len(x) == 0:
        return math.nan
    net.eval()
    dev = module_device(net)
    pred = torch.cat([net(x[i : i + batch_size].to(dev)).argmax(1).cpu() for i in range(0, len(x), batch_size)])
    return float((pred == labels.cpu()).float().mean())


def train_fine_labels(
    net: FeatureNet, data: TaskData, *, epochs: int, lr: float, batch_size: int, augmentation: str,
    seed: int, progress: ProgressFn = no_progress, stage: str = "train backbone", device: str = "cpu",
) -> list[float]:
    """Train ``net`` on ``(x_train, fine_train)`` on ``device``; returns the mean loss of each epoch.

    The data stay on the CPU: batches are drawn and augmented there (a CPU generator, so the
    batches do not depend on the device) and moved to ``device``."""
    if epochs < 1 or lr <= 0 or batch_size < 1:
        raise ConfigError(f"backbone training needs backbone_epochs >= 1, backbone_lr > 0, "
                          f"backbone_batch_size >= 1 (got {epochs}, {lr}, {batch_size})")
    if augmentation not in AUGMENTATIONS:
        raise ConfigError(f"backbone_augment must be one of {', '.join(AUGMENTATIONS)}, got {augmentation!r}")
    n = len(data.x_train)
    net.to(device)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.25)
    gen = torch.Generator().manual_seed(seed)
    history = []
    progress(stage, 0, epochs)
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            xb = augment(data.x_train[idx], augmentation, generator=gen).to(device)
            loss = F.cross_entropy(net(xb), data.fine_train[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / n)
        progress(stage, epoch + 1, epochs)
        log.info("%s: epoch %d/%d loss %.4f", stage, epoch + 1, epochs, history[-1])
    net.eval()
    return history


def cached_trained_backbone(
    name: str,
    make: Callable[[], FeatureNet],
    data: TaskData,
    settings: Mapping[str, Any],
    context: FitContext,
) -> nn.Module:
    """The penultimate-feature extractor of a backbone trained on the fine labels, from cache.

    ``make`` builds the untrained architecture (seeded by the caller's RNG state); ``settings``
    are the backbone parameters (``backbone_epochs``, ``backbone_lr``, ``backbone_batch_size``,
    ``backbone_augment``, ...), all part of the cache key. The returned module carries
    ``build_info`` (cache key, hit or miss, timings, fine-class accuracies) for the record.
    """
    key = cache.hash_key({
        "what": "trained backbone", "name": name, "version": BACKBONE_CODE_VERSION,
        "settings": dict(settings), "seed": context.seed, "data": data_fingerprint(data),
    })
    path = cache.entry_path(cache.cache_root(context.cache_dir), "backbones", key, label=name)
    t0 = time.perf_counter()
    with torch.random.fork_rng():
        torch.manual_seed(context.seed)
        net = make()
    entry = cache.load_entry(path)
    info: dict[str, Any] = {"name": name, "key": key, "path": str(path)}
    if entry is not None:
        try:
            net.load_state_dict(entry["state_dict"])
        except (KeyError, RuntimeError) as exc:
            log.warning("cache entry %s does not fit %s (%s); retraining", path, name, type(exc).__name__)
            entry = None
            with torch.random.fork_rng():
                torch.manual_seed(context.seed)
                net = make()
    net.to(context.device)
    if entry is not None:
        # entries written before fabench recorded the device say None
        info.update(cache="hit", test_accuracy=entry.get("test_accuracy"), epoch_losses=entry.get("epoch_losses"),
                    trained_on=entry.get("trained_on"))
        info["timings"] = {f"backbone {name} (load)": time.perf_counter() - t0}
    else:
        with torch.random.fork_rng(), training_threads(context.device) as threads:
            torch.manual_seed(context.seed)
            losses = train_fine_labels(
                net, data, epochs=int(settings["backbone_epochs"]), lr=float(settings["backbone_lr"]),
                batch_size=int(settings["backbone_batch_size"]), augmentation=str(settings["backbone_augment"]),
                seed=context.seed, progress=context.progress, stage=f"train backbone {name}",
                device=context.device,
            )
        train_time = time.perf_counter() - t0
        test_acc = accuracy(net, data.x_test, data.fine_test)
        # The key holds no device: a backbone trained on a GPU serves CPU runs and the reverse. The
        # weights differ by what round-off does to training, so the entry says where it was trained
        # (on a CPU, with how many threads: always TRAINING_THREADS, said so the entry explains itself).
        trained_on = f"{describe_device(context.device, threads=threads)}, torch {torch.__version__}"
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        saved = cache.save_entry(path, {"state_dict": state, "test_accuracy": test_acc,
                                        "epoch_losses": losses, "trained_on": trained_on})
        info.update(cache="miss" if saved else "not writable", test_accuracy=test_acc, epoch_losses=losses,
                    trained_on=trained_on)
        info["timings"] = {f"backbone {name} (train)": train_time}
    net.eval()
    extractor = net.extractor()
    setattr(extractor, "build_info", info)
    return extractor
