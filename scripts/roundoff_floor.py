"""How far a configuration's numbers move when its head trains on inputs perturbed at round-off.

A CPU and a GPU run of one configuration attack the same test points with the same backbone
weights, yet their numbers differ a little. Besides the attacks' random starts, the backbone's
features differ at float32 round-off (another convolution kernel; about 1e-7 relative), and the
head's training (gradient descent from a small initialisation, Li, Pan, Lyu, Li, ICLR 2025) can
amplify that. This script measures the amplification on one device, where it can be separated
from everything else: it runs the configuration as it is, then again with the head's training
inputs multiplied by ``1 + noise * N(0, 1)`` (seeded, one draw per element) for each noise level,
and prints how far each perturbed run is from the unperturbed one, in the columns of
``scripts/compare_records.py``. A CPU/GPU difference no larger than this floor at the devices'
round-off level is what the configuration itself does, not a device bug; one far above it is::

    python scripts/roundoff_floor.py --task cifar5v5 --recipe binary --n-eval 100 --noise 1e-7,1e-6
    python scripts/roundoff_floor.py --task synthetic --recipe fine --set d=200 --attacks analytic --noise 0,1e-3

Only the head's training inputs are perturbed (the features, or the pixels and the synthetic
points for heads on the input); the test points, the backbone and the attacks' random starts are
the run's own. Nothing is written: the records stay in memory (``--json`` prints their numbers).
``--noise 0`` must reproduce the unperturbed run exactly (a check of this harness), and
``--reference leaderboard/records`` compares the unperturbed run with the published record.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from compare_records import compare  # noqa: E402  (a sibling script)


def feature_drift(backbone: Any, x: Any, z: Any, *, device: str) -> tuple[float, float]:
    """``(|z' - z| / |z|, max |z' - z| / max |z|)`` for ``z'`` the features of ``x`` extracted by a
    copy of ``backbone`` on ``device``: the round-off level at which two devices' heads train."""
    import copy

    from fabench.device import full_precision, resolve_device
    from fabench.models.backbones import head_inputs

    dev = resolve_device(device)
    full_precision(dev)
    other = head_inputs(copy.deepcopy(backbone).to(dev), x).to(z.device).double()
    diff = other - z.double()
    return (float(diff.norm() / z.double().norm().clamp_min(1e-300)),
            float(diff.abs().max() / z.double().abs().max().clamp_min(1e-300)))


@contextlib.contextmanager
def perturbed_training_inputs(noise: float, *, seed: int, compare_device: str | None = None) -> Iterator[dict[str, Any]]:
    """Within the block, every head trains on ``z * (1 + noise * N(0, 1))`` instead of its inputs
    ``z`` (:func:`fabench.recipes.common.extract_features`, which ``setup_head`` calls; the cached
    features themselves are left as they are). Yields a dict that receives the relative size of
    the perturbation actually applied (``applied``: ``|dz| / |z|``) and the inputs' shape; with
    ``compare_device``, also ``drift``: how far the same backbone's features of the same training
    images are apart when extracted on that device (:func:`feature_drift`)."""
    import torch

    from fabench.recipes import common

    original = common.extract_features
    seen: dict[str, Any] = {}

    def extract(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, str]:
        z, how = original(*args, **kwargs)
        backbone, data = args[0], args[1]
        if compare_device is not None and backbone is not None:
            seen["drift"] = feature_drift(backbone, data.x_train, z, device=compare_device)
        if noise:
            g = torch.Generator().manual_seed(seed)
            eps = torch.randn(tuple(z.shape), generator=g, dtype=torch.float64).to(z.device)
            new = (z.double() * (1 + noise * eps)).to(z.dtype)
            seen["applied"] = float((new.double() - z.double()).norm() / z.double().norm().clamp_min(1e-300))
            z = new
        else:
            seen["applied"] = 0.0
        seen["shape"] = tuple(z.shape)
        return z, how

    common.extract_features = extract
    try:
        yield seen
    finally:
        common.extract_features = original


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected finite noise levels >= 0, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", required=True, help="registered task, or a task file")
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-eval", type=int, default=0, help="test points attacked (0: all)")
    ap.add_argument("--attacks", default="", help="comma-separated attacks (default: the default protocol)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as `fabench evaluate --set`")
    ap.add_argument("--noise", type=_float_list, default=[1e-7, 1e-6],
                    help="relative noise levels on the head's training inputs (default 1e-7,1e-6; '' for none: "
                         "only the run itself, e.g. with --compare-device)")
    ap.add_argument("--noise-seed", type=int, default=1234, help="seed of the noise draws")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--device", default="cpu", help="where every run trains and attacks (default cpu)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--compare-device", default=None,
                    help="also extract the training features on this device (e.g. cuda) and print how far "
                         "they are from the run's: the noise level two devices differ by")
    ap.add_argument("--reference", type=Path, default=None, metavar="DIR",
                    help="a results directory (e.g. leaderboard/records): also compare the unperturbed run with "
                         "its record of the same configuration, as the first row")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON lines instead of a table")
    args = ap.parse_args(argv)

    from fabench.errors import FabenchError
    from fabench.evaluation import DEFAULT_ATTACKS, RunConfig, compute, resolve

    overrides = []
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"roundoff_floor: --set expects KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        overrides.append((key.strip(), value.strip()))
    attacks = tuple(a for a in args.attacks.split(",") if a) or DEFAULT_ATTACKS
    cfg = RunConfig(task=args.task, recipe=args.recipe, seed=args.seed, attacks=attacks, n_eval=args.n_eval,
                    overrides=tuple(overrides), data_dir=args.data_dir, cache_dir=args.cache_dir,
                    device=args.device, threads=args.threads)
    try:
        res = resolve(cfg)
        t0 = time.perf_counter()
        with perturbed_training_inputs(0.0, seed=args.noise_seed, compare_device=args.compare_device) as seen:
            reference = compute(cfg, res)
        print(f"reference: {res.task_name}/{res.recipe_name} seed {args.seed}, key {res.key[:8]}, "
              f"{reference.n_eval} points, {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        if args.compare_device is not None:
            if "drift" in seen:
                norm, peak = seen["drift"]
                print(f"training features on {args.compare_device} against {args.device}: {norm:.3g} apart "
                      f"(relative norm), largest element {peak:.3g} of the largest feature")
            else:
                print(f"--compare-device: {res.task_name}'s heads train on the input itself (no backbone): "
                      "the same on every device")
        rows = []
        if args.reference is not None:
            from fabench.records import find_record

            published = find_record(args.reference, res.task_name, res.recipe_name, args.seed, res.key)
            if published is None:
                print(f"roundoff_floor: no record of this configuration ({res.key[:16]}) in {args.reference}",
                      file=sys.stderr)
                return 2
            rows.append({"noise": f"vs {args.reference}", "applied (rel.)": None, **compare(published, reference)})
        for noise in args.noise:
            t0 = time.perf_counter()
            with perturbed_training_inputs(noise, seed=args.noise_seed) as seen:
                other = compute(cfg, res)
            rows.append({"noise": noise, "applied (rel.)": seen.get("applied"), **compare(reference, other)})
            print(f"noise {noise:g}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    except FabenchError as e:
        print(f"roundoff_floor: {e}", file=sys.stderr)
        return 2
    if not rows:
        return 0
    for row in rows:
        for k in ("task", "recipe", "seed", "devices", "backbone"):
            row.pop(k, None)
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(f"{res.task_name}/{res.recipe_name} seed {args.seed}, {reference.n_eval} points: each run with the "
              f"head's training inputs perturbed, against the unperturbed run")
        print(tabulate(rows, headers="keys", floatfmt=".3g"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
