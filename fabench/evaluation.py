"""One evaluation, end to end: resolve the configuration, reuse or run, write the record.

This is the library entry point behind ``fabench evaluate``; it prints nothing (progress goes to
the callback, numbers into the returned :class:`~fabench.records.Record`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, cast

from fabench._lazy import lazy, lazy_attr
from fabench import params as P
from fabench import registry
from fabench.certify import certify
from fabench.errors import ConfigError, InvalidOutcomeError, PluginError, UnknownNameError
from fabench.flags import sanity_flags
from fabench.metrics import feature_report
from fabench.models.backbones import effective_params, head_inputs
from fabench.protocol import AttackSpec, check_n_eval, check_radii, run_protocol, select_points
from fabench.provenance import describe_change, provenance
from fabench.records import (
    SCHEMA_VERSION, Record, check_writable, config_key, find_record, radius_key, record_path, versions,
    write_record_or_keep,
)
from fabench.taskfiles import TASK_KINDS, FileTask, load_task_file
from fabench.types import Attack, FitContext, ProgressFn, Task, TaskData, no_progress
from fabench.validation import (
    BUILTIN_SOURCE, GuardedAttack, check_seed, check_unchanged, guarded, model_fingerprint, eval_data_fingerprint, who,
)

if TYPE_CHECKING:  # pragma: no cover - heavy imports are lazy (see fabench._lazy)
    import torch

    from fabench.models import Classifier
else:
    torch = lazy("torch")
    Classifier = lazy_attr("fabench.models.classifier", "Classifier")

DEFAULT_ATTACKS = ("analytic", "pairwise", "pgd", "apgd", "deepfool", "exact")
"""The default protocol. ``exact`` (the ground truth of two-layer heads on the input) sees through
the dead-ReLU plateaus where gradient attacks stop short; in the default list it claims nothing on
models it cannot solve (``exact.strict = False``), asked for by name it refuses them. ``apgd``
(AutoAttack APGD-CE, 100 iterations x 4 restarts, per-point bisection over the radii) finds the
flips through a CNN backbone that PGD misses: on ``mnist5v5`` seed 0 (100 points) the protocol
without it was up to 0.07 (binary) / 0.09 (fine) above the audit's strong suite; with it the
audit's gap is at most 0.01 at every radius (100 x 3 left 0.02 on fine; 100 x 2 and 50 x 3, 0.03).
In the default list ``apgd`` claims nothing on the models ``exact`` solves on an unbounded input
(``apgd.skip_solved``: two-layer heads on the input with at most 16 units, e.g. the synthetic
task), where the audits found no gap without it and it would cost about 10x the rest of the
protocol; on pixels, where ``exact`` ignores the box and gives only an upper bound, it runs."""
DEFAULT_ATTACK_PARAMS: dict[str, dict[str, Any]] = {
    "apgd": {"steps": 100, "restarts": 4, "search": "bisect", "skip_solved": True},
    "exact": {"strict": False},
}


@dataclass
class RunConfig:
    """Everything that determines a result (and nothing that does not)."""

    task: str
    recipe: str
    seed: int = 0
    attacks: Sequence[str] = DEFAULT_ATTACKS
    radii: Sequence[float] | None = None
    n_eval: int = 0
    overrides: Sequence[tuple[str, Any]] = ()
    """``(key, value)`` pairs as ``--set key=value`` takes them; a value may be text (parsed to the
    default's type) or a typed Python value (int, float, bool, str, tuple of numbers)."""
    data_dir: str | None = None
    cache_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    protocol: str = "full"
    """``full`` (every attack's own curve) or ``fast`` (each attack only on what the earlier ones left;
    the same or a stronger worst case, cheaper); part of the key (:data:`fabench.protocol.PROTOCOL_MODES`)."""
    device: str | None = None
    """``auto``, ``cpu``, ``cuda[:N]`` or ``mps`` (default ``$FABENCH_DEVICE``, else ``auto``). Like
    ``threads`` and ``batch_size`` it is recorded in the record's ``runtime``, not in its key."""
    threads: int = 0
    """torch's CPU threads (0: torch's default)."""
    batch_size: int = 0
    """Points attacked together (0: chosen for the device, see :func:`fabench.device.attack_batch_size`)."""


@dataclass
class Resolved:
    task: Task
    task_name: str
    task_params: dict[str, Any]
    recipe: Any
    recipe_name: str
    recipe_params: dict[str, Any]
    attacks: list[AttackSpec]
    radii: tuple[float, ...]
    headline: tuple[float, ...]
    config: dict[str, Any]
    key: str
    task_recipe_defaults: dict[str, Any] = field(default_factory=dict)
    """The recipe parameters the task file set (its ``[recipe_defaults]``), before ``--set``."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Versions and code hashes of fabench and of every distribution providing a part (decides reuse)."""


def get_task(name: str) -> tuple[Task, str]:
    """A registered task, or a task file given by path (``*.toml``)."""
    if name.endswith(".toml"):
        ft = load_task_file(name, source=f"file:{Path(name).parent}")
        return ft, ft.meta.name
    entry = registry.tasks.entry(name)
    return entry.obj, entry.name


def canonical_params(task: Task, params: dict[str, Any]) -> dict[str, Any]:
    """A task's resolved parameters in the one form the configuration key is taken of (list
    parameters are already sorted, :func:`fabench.params.check_distinct`): through the
    ``canonical_params(params)`` of the task, or of a task file's kind, where it has one (the
    synthetic kind writes the default split as ``()``)."""
    kind = TASK_KINDS.get(task.kind) if isinstance(task, FileTask) else None
    hook = getattr(kind if kind is not None else task, "canonical_params", None)
    return dict(hook(params)) if callable(hook) else params


def route_overrides(
    pairs: Sequence[tuple[str, Any]], task_defaults: Mapping[str, Any], recipe_defaults: Mapping[str, Any],
    attack_defaults: Mapping[str, Mapping[str, Any]],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]]]:
    """Send each ``--set key=value`` to the task, the recipe or an attack, parsing the value.

    ``task.k``, ``recipe.m`` and ``<attack>.steps`` are explicit; a bare key goes wherever it is
    known: the task or the recipe (one known to both must be qualified), else the one selected
    attack that has it (qualify it when several have it). Text is parsed to the default's type; typed values are checked against it.
    """
    t: dict[str, Any] = {}
    r: dict[str, Any] = {}
    a: dict[str, dict[str, Any]] = {}
    for key, text in pairs:
        scope, dot, name = key.partition(".")
        if dot and scope == "task":
            target, defaults, owner = t, task_defaults, "task"
        elif dot and scope == "recipe":
            target, defaults, owner = r, recipe_defaults, "recipe"
        elif dot and scope in attack_defaults:
            target, defaults, owner = a.setdefault(scope, {}), attack_defaults[scope], f"attack {scope}"
        elif dot:
            scopes = ["task", "recipe", *attack_defaults]
            close = difflib.get_close_matches(scope, scopes, n=1)
            hint = f"; did you mean {close[0]}.{name}?" if close else ""
            raise UnknownNameError(
                f"--set {key}: {scope!r} is not 'task', 'recipe' or a selected attack "
                f"({', '.join(attack_defaults) or 'none'}){hint}"
            )
        else:
            name = key
            owners = [o for o, d in [("task", task_defaults), ("recipe", recipe_defaults)] if key in d] or [
                o for o, d in attack_defaults.items() if key in d]  # the task and recipe come first
            if len(owners) > 1:
                raise ConfigError(f"--set {key}: {', '.join(owners)} all have {key!r}; "
                                  f"write {' or '.join(f'{o}.{key}' for o in owners)}")
            if not owners:
                known = sorted(set(task_defaults) | set(recipe_defaults))
                close = difflib.get_close_matches(key, known + [f"{a}.{k}" for a, d in attack_defaults.items()
                                                                for k in d], n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise UnknownNameError(f"--set {key}: no task or recipe parameter {key!r}{hint} "
                                       f"Known: {', '.join(known)}")
            if owners[0] == "task":
                target, defaults, owner = t, task_defaults, "task"
            elif owners[0] == "recipe":
                target, defaults, owner = r, recipe_defaults, "recipe"
            else:
                target, defaults, owner = a.setdefault(owners[0], {}), attack_defaults[owners[0]], f"attack {owners[0]}"
        if name not in defaults:
            close = difflib.get_close_matches(name, list(defaults), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(f"--set {key}: {owner} has no parameter {name!r}{hint} "
                                   f"Known: {', '.join(sorted(defaults))}")
        if isinstance(text, str):
            target[name] = P.parse_value(text, defaults[name], key=key)
        else:
            target[name] = P.coerce(text, defaults[name], key=key)
    return t, r, a


def resolve(cfg: RunConfig) -> Resolved:
    """Look up every name and resolve every parameter; raises before any work is done."""
    check_seed(cfg.seed)
    task, task_name = get_task(cfg.task)
    recipe_entry = registry.recipes.entry(cfg.recipe)
    recipe = recipe_entry.obj
    attack_entries = [registry.attacks.entry(a) for a in cfg.attacks]
    if not attack_entries:
        raise ConfigError("need at least one attack")
    attack_defaults = {e.name: dict(e.meta.params) for e in attack_entries}
    t_over, r_over, a_over = route_overrides(cfg.overrides, task.meta.params, recipe.meta.params, attack_defaults)
    task_params = canonical_params(task, P.resolve(task.meta.params, t_over, owner=f"task {task_name}",
                                                   bounds=task.meta.bounds, choices=task.meta.choices))
    defaults_for = getattr(task, "defaults_for", None)  # task files have them; plugin tasks may not
    task_recipe_defaults = defaults_for(recipe_entry.name, recipe.meta.params) if defaults_for else {}
    if not getattr(recipe, "inherit_task_defaults", True):  # a recipe may opt out of the task file's "*" table
        task_recipe_defaults = {k: v for k, v in task_recipe_defaults.items()
                                if k in getattr(task, "recipe_defaults", {}).get(recipe_entry.name, {})}
    recipe_params = effective_params(
        P.resolve(recipe.meta.params, task_recipe_defaults, r_over, owner=f"recipe {recipe_entry.name}",
                  bounds=recipe.meta.bounds, choices=recipe.meta.choices)
    )
    by_default = tuple(cfg.attacks) == DEFAULT_ATTACKS
    specs = [AttackSpec(e.name, e.obj if e.source == BUILTIN_SOURCE else cast(Attack, GuardedAttack(e.obj, e.name, e.source)),
                        P.resolve(e.meta.params, DEFAULT_ATTACK_PARAMS.get(e.name, {}) if by_default else {},
                                  a_over.get(e.name, {}), owner=f"attack {e.name}",
                                  bounds=e.meta.bounds, choices=e.meta.choices))
             for e in attack_entries]
    radii = check_radii(cfg.radii if cfg.radii is not None else getattr(task, "radii", ()) or (0.0,))
    headline = tuple(r for r in getattr(task, "headline_radii", ()) if r in radii) or radii
    from fabench.protocol import PROTOCOL_MODES

    if cfg.protocol not in PROTOCOL_MODES:
        raise ConfigError(f"--protocol {cfg.protocol!r}: expected one of {', '.join(PROTOCOL_MODES)}")
    check_n_eval(cfg.n_eval)  # and at most the test set, once it is loaded (compute)
    config = {
        "schema": SCHEMA_VERSION,
        "task": task_name,
        "task_params": task_params,
        "recipe": recipe_entry.name,
        "recipe_params": recipe_params,
        "attacks": {s.name: dict(s.params) for s in specs},
        "radii": list(radii),
        "n_eval": cfg.n_eval,
        "protocol": cfg.protocol,
        "seed": cfg.seed,
        "sources": {"task": task.meta.source, "recipe": recipe_entry.source,
                    **{f"attack {e.name}": e.source for e in attack_entries}},
        **cfg.extra,
    }
    prov = provenance({"task": (task.meta.source, task), "recipe": (recipe_entry.source, recipe),
                       **{f"attack {e.name}": (e.source, e.obj) for e in attack_entries}})
    return Resolved(task, task_name, task_params, recipe, recipe_entry.name, recipe_params, specs,
                    radii, headline, config, config_key(config), dict(task_recipe_defaults), prov)


def evaluate(
    cfg: RunConfig,
    *,
    out_dir: Path,
    force: bool = False,
    progress: ProgressFn = no_progress,
    notice: Callable[[str], None] | None = None,
) -> tuple[Record, Path, bool]:
    """Run (or reuse) one evaluation. Returns ``(record, path, reused)``.

    A finished record of the same configuration is reused only if its provenance (fabench's and the
    plugins' versions and code) is the current one; otherwise ``notice`` is told why it is recomputed.
    A record that cannot be written is kept: :func:`~fabench.records.write_record_or_keep` raises a
    :class:`~fabench.errors.RecordWriteError` naming the fallback file.
    """
    res = resolve(cfg)
    if not force:
        found, why = reusable_record(out_dir, res, seed=cfg.seed)
        if found is not None:  # reusing writes nothing: a read-only results directory is fine
            return found, record_path(out_dir, res.task_name, res.recipe_name, cfg.seed, res.key), True
        if why and notice is not None:
            notice(f"finished record found but {why} since: recomputing")
    check_writable(out_dir)  # before any work is done
    record = compute(cfg, res, progress=progress)
    path = write_record_or_keep(record, out_dir)
    return record, path, False


def reusable_record(out_dir: Path, res: Resolved, *, seed: int) -> tuple[Record | None, str]:
    """The one rule of reuse (``evaluate`` and ``fabench sweep``): the finished record of ``res``'s
    configuration if its provenance is the current one, else ``(None, why)`` (``why`` is empty when
    no record of this configuration exists)."""
    found = find_record(out_dir, res.task_name, res.recipe_name, seed, res.key)
    if found is None:
        return None, ""
    why = describe_change(found.provenance, res.provenance)
    return (None, why) if why else (found, "")


def compute(cfg: RunConfig, res: Resolved, *, progress: ProgressFn = no_progress) -> Record:
    """Load the data, fit the recipe, run the protocol: the finished :class:`Record` (no I/O)."""
    from fabench.device import (activation_footprint, attack_batch_size, describe_device, full_precision,
                                resolve_device, set_threads, tune_allocator)
    from fabench.models.classifier import cpu_twin

    device = resolve_device(cfg.device)
    runtime: dict[str, Any] = {"device": str(device), "device_name": describe_device(device),
                               "precision": full_precision(device),
                               "threads": set_threads(cfg.threads),
                               "allocator": tune_allocator()}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with guarded("task", res.task_name, res.task.meta.source, "load"):
        data = res.task.load(res.task_params, seed=cfg.seed, data_dir=cfg.data_dir, progress=progress)
        if not isinstance(data, TaskData):
            raise PluginError(f"{who('task', res.task_name, res.task.meta.source)} returned "
                              f"{type(data).__name__}, not a fabench.types.TaskData")
    check_n_eval(cfg.n_eval, n_test=len(data.x_test))  # before any training
    timings["data"] = time.perf_counter() - t0
    data_print = eval_data_fingerprint(data)  # nothing after this may change the test data
    t0 = time.perf_counter()
    context = FitContext(seed=cfg.seed, progress=progress, cache_dir=cfg.cache_dir, data_dir=cfg.data_dir,
                         device=str(device))
    with guarded("recipe", res.recipe_name, res.recipe.meta.source, "fit"):
        model = res.recipe.fit(data, res.recipe_params, context=context)
        if not isinstance(model, Classifier):
            raise PluginError(f"{who('recipe', res.recipe_name, res.recipe.meta.source)} returned "
                              f"{type(model).__name__}, not a fabench.models.Classifier")
        model.cpu().eval()  # the metrics are computed on the CPU, the attacks on ``device``
    timings["train"] = time.perf_counter() - t0
    fit_by = who("recipe", res.recipe_name, res.recipe.meta.source)
    check_unchanged(data_print, eval_data_fingerprint(data), what="the task's test data", during=f"{fit_by}'s fit()")
    # Stages inside the recipe (backbone training, feature extraction) report their own times.
    timings.update({f"train: {k}": float(v) for k, v in model.info.pop("timings", {}).items()})
    t0 = time.perf_counter()
    mu = model.head_features(data)
    report = feature_report(model.head.unit_weights(), model.head.unit_positive(), model.head.unit_labels(), mu,
                            data.positive_mask)
    timings["metrics"] = time.perf_counter() - t0
    # The batch is chosen from the activations of the model the attacks run (measured on one test
    # point, on the CPU: they do not depend on the device).
    footprint = activation_footprint(model, data.x_test[:1]) if len(data.x_test) and not cfg.batch_size else None
    model_print = model_fingerprint(model)  # the attacks (and the model itself) must leave it as it is
    model.to(device)
    runtime["batch_size"] = attack_batch_size(device, data.x_test[0].numel() if len(data.x_test) else 1,
                                              requested=cfg.batch_size, footprint=footprint)
    result = run_protocol(model, data, res.attacks, radii=res.radii, n_eval=cfg.n_eval, seed=cfg.seed,
                          batch_size=runtime["batch_size"], device=device, mode=cfg.protocol, progress=progress)
    timings.update(result.timings)
    feature_space: dict[str, Any] = {}
    if not model.identity_backbone:  # the head alone, where the theory applies (on the same device)
        t0 = time.perf_counter()
        # Its own batch: the head alone is small, whatever the backbone's activations.
        runtime["feature_space_batch_size"] = attack_batch_size(device, mu.shape[1], requested=cfg.batch_size)
        feature_space = feature_space_protocol(model, data, res.attacks, n_eval=cfg.n_eval, seed=cfg.seed,
                                               mode=cfg.protocol, progress=progress, device=device,
                                               batch_size=runtime["feature_space_batch_size"])
        timings["feature space"] = time.perf_counter() - t0
    check_unchanged(data_print, eval_data_fingerprint(data), what="the task's test data", during="the attacks")
    check_unchanged(model_print, model_fingerprint(model), what=f"the model of {fit_by}", during="the attacks")
    # The certificate (float64, the head alone) is cheap: on the CPU, like the data, on the CPU twin
    # the exact attack used and on its batches, so the exact attack's work is reused (exact.py memo).
    t0 = time.perf_counter()
    certified, flags = bracket(cpu_twin(model), data, result, names=[s.name for s in res.attacks],
                               batch_size=runtime["batch_size"])
    timings["certify"] = time.perf_counter() - t0
    own, other = report.own_other(data.positive_mask)
    names = [s.name for s in res.attacks]
    robust = {a: {radius_key(r): v for r, v in result.robust_accuracy(a).items()} for a in names + ["worst"]}
    med = {a: result.median_distance(a) for a in names + ["worst"]}
    class_names = list(data.class_names) or [f"class {j}" for j in range(data.num_classes)]
    record = Record(
        task=res.task_name,
        recipe=res.recipe_name,
        seed=cfg.seed,
        config=res.config,
        clean_accuracy=result.clean_accuracy,
        robust_accuracy=robust,
        median_min_distance=med["worst"],
        median_distance=dict(med),
        fa_score=report.score,
        cosine_matrix={
            "units": report.unit_labels,
            "unit_positive": [bool(v) for v in report.unit_positive],
            "features": class_names,
            "positive_features": [bool(v) for v in data.positive_mask],
            "values": [[round(float(c), 6) for c in row] for row in report.cosines],
            "unit_scores": [float(s) for s in report.unit_scores],
            "mean_own_class": own,
            "mean_other_class": other,
        },
        n_eval=len(result.indices),
        attacks=names,
        radii=list(res.radii),
        headline_radii=list(res.headline),
        timings=timings,
        versions=versions(),
        runtime=runtime,
        data_info={"n_train": len(data.x_train), "n_test": len(data.x_test), **dict(data.info)},
        model_info=dict(model.info),
        sources=dict(res.config["sources"]),
        provenance=dict(res.provenance),
        verified_attacks=sorted(a for a, ok in result.verified.items() if ok),
        task_recipe_defaults=dict(res.task_recipe_defaults),
        feature_space=feature_space,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        key=res.key,
        certified=certified,
        flags=flags,
    )
    return record


def bracket(model: Any, data: Any, result: Any, *, names: Sequence[str], batch_size: int = 500,
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The certified curve (:mod:`fabench.certify`, ``batch_size`` points at a time) and the sanity
    flags (:mod:`fabench.flags`)."""
    x, y = data.x_test[result.indices], data.y_test[result.indices]
    cert = certify(model, x, y, max_radius=2 * max(max(result.radii), 1e-6), batch_size=batch_size)
    certified: dict[str, Any] = {}
    acc: dict[float, float] | None = None
    if cert is not None and cert.space == "input":
        check_certificate(cert.radius, result, names=names)
    if cert is not None:
        acc = cert.accuracy(result.radii)
        certified = {"space": cert.space, "method": cert.method,
                     "robust_accuracy": {radius_key(r): v for r, v in acc.items()},
                     "median_radius": float(cert.radius.median()) if len(cert.radius) else None}
    flags = sanity_flags(result.radii, {n: result.outcomes[n].broken for n in names}, result.worst_broken,
                         acc if cert is not None and cert.space == "input" else None,
                         clean_correct=result.clean_correct)
    return certified, flags


#: Relative margin of :func:`check_certificate`: a claimed distance counts as below a certified
#: radius only below ``radius * (1 - CONTRADICTION_RTOL)`` (float32 attacks, float64 bounds; the
#: exact regions' own tolerance is 1e-4).
CONTRADICTION_RTOL = 1e-3


def check_certificate(radius: "torch.Tensor", result: Any, *, names: Sequence[str]) -> None:
    """No attack may claim a point closer than its certified radius (a sound lower bound in the
    input space): such a claim is false, or the model does not compute what its weights say.
    Raises :class:`InvalidOutcomeError` naming the attacks and the first such point."""
    bound = radius.double() * (1 - CONTRADICTION_RTOL)
    below = result.clean_correct & (result.min_distance.double() < bound)
    if not bool(below.any()):
        return
    j = int(below.nonzero()[0, 0])
    who_ = [n for n in names if float(result.outcomes[n].distances[j]) < float(bound[j])]
    raise InvalidOutcomeError(
        f"{', '.join(who_) or 'the attacks'} claim{'s' if len(who_) == 1 else ''} test point {int(result.indices[j])} "
        f"at distance {float(result.min_distance[j]):.6g}, below its certified radius {float(radius[j]):.6g} "
        f"({int(below.sum())} such points): a claim is false or the model does not compute what its weights "
        "say; no record was written")


#: Feature-space radii, as fractions of the median distance between two head-space class means
#: (on the paper's synthetic data, sqrt(2d): the averaging net breaks at about 0.22 of it,
#: sqrt(d/k), the decoupled one at 0.5, sqrt(d/2)).
FEATURE_SPACE_FRACTIONS = tuple(round(0.05 * i, 2) for i in range(21))
FEATURE_SPACE_HEADLINE = (0.1, 0.2, 0.3, 0.4, 0.5)


def feature_space_protocol(
    model: Classifier, data: TaskData, attacks: Sequence[AttackSpec], *, n_eval: int, seed: int,
    mode: str = "full", progress: ProgressFn = no_progress, device: "torch.device | str | None" = None,
    batch_size: int = 500,
) -> dict[str, Any]:
    """The protocol on the head alone, in its input space (the backbone's features), on ``device``
    (default: where the model is), ``batch_size`` points at a time.

    The paper's analysis (Li, Pan, Lyu, Li, ICLR 2025) is about the two-layer head on its inputs:
    there, with the features ``mu_j`` the class means of the head's training inputs, the analytic
    and pairwise attacks move exactly along feature directions. The same test points as in pixel
    space are attacked (``select_points`` with the same ``n_eval`` and seed), unbounded (feature
    space has no box), at radii ``f * scale`` for ``f`` in :data:`FEATURE_SPACE_FRACTIONS`, where
    ``scale`` is the median distance between two class means.
    """
    mu = model.head_features(data).float()
    idx = select_points(len(data.x_test), n_eval, seed)
    z = head_inputs(model.backbone, data.x_test[idx])
    pair = torch.cdist(mu, mu)[torch.triu(torch.ones(len(mu), len(mu), dtype=torch.bool), diagonal=1)]
    scale = float(pair.median()) if len(pair) else 1.0
    radii = tuple(round(f * scale, 6) for f in FEATURE_SPACE_FRACTIONS)
    headline = tuple(round(f * scale, 6) for f in FEATURE_SPACE_HEADLINE)
    inf = float("inf")
    fdata = dataclasses.replace(
        data, name=f"{data.name} (feature space)", x_train=z[:0], fine_train=data.fine_train[:0], x_test=z,
        fine_test=data.fine_test[idx], features=mu, bounds=(-inf, inf), radii=radii, headline_radii=headline,
    )
    head_only = Classifier(model.head, None, features=mu)
    head_only.eval()

    def tagged(stage: str, done: int, total: int) -> None:
        progress(f"feature space: {stage}", done, total)

    result = run_protocol(head_only, fdata, attacks, radii=radii, n_eval=0, seed=seed, mode=mode, progress=tagged,
                          device=device, batch_size=batch_size)
    names = [s.name for s in attacks]
    return {
        "clean_accuracy": result.clean_accuracy,
        "robust_accuracy": {a: {radius_key(r): v for r, v in result.robust_accuracy(a).items()}
                            for a in names + ["worst"]},
        "median_distance": {a: result.median_distance(a) for a in names + ["worst"]},
        "median_min_distance": result.median_distance("worst"),
        "radii": list(radii),
        "headline_radii": list(headline),
        "scale": scale,
        "scale_definition": "median L2 distance between two head-space class means",
        "fractions": list(FEATURE_SPACE_FRACTIONS),
        "feature_norm": float(z.norm(dim=1).median()) if len(z) else None,
        "n_eval": len(idx),
        "timings": dict(result.timings),
    }
