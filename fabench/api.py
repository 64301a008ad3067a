"""The Python API: one evaluation, and what is registered, from a notebook or a script.

::

    import fabench

    rec = fabench.evaluate(task="synthetic", recipe="binary", seed=0, attacks=["analytic", "pgd"],
                           radii=[0, 10, 20], params={"d": 512, "recipe.lr": 0.01}, out="results")
    rec.clean_accuracy, rec.robust_accuracy_at(10.0), rec.robust_curve("pgd")

Parameters are typed Python values (``{"d": 512, "bias": False, "pgd.steps": 100}``) or text as
``--set`` takes it; keys are routed exactly like ``--set`` (``task.``, ``recipe.``, ``<attack>.``
prefixes disambiguate). Errors are :class:`fabench.errors.FabenchError` (one-line messages).
Nothing here prints.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from fabench.types import ProgressFn, no_progress

if TYPE_CHECKING:  # pragma: no cover
    from fabench.records import Record
    from fabench.taskfiles import FileTask



def evaluate(
    *,
    task: str,
    recipe: str,
    seed: int = 0,
    attacks: Sequence[str] | None = None,
    radii: Sequence[float] | None = None,
    params: Mapping[str, Any] | None = None,
    n_eval: int = 0,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    progress: ProgressFn = no_progress,
    notice: Callable[[str], None] | None = None,
) -> "Record":
    """Run (or reuse) one evaluation and return its :class:`~fabench.records.Record`.

    ``attacks`` defaults to the CLI's default protocol (:data:`fabench.evaluation.DEFAULT_ATTACKS`).
    ``task`` is a registered task, a task file (``*.toml``) or a :class:`~fabench.taskfiles.FileTask`
    name registered by :func:`task_variant`; ``radii`` default to the task's grid; ``out`` defaults
    to ``$FABENCH_RESULTS`` (the record is written there, and a finished record with the same
    configuration and provenance is reused unless ``force``). ``notice`` hears why a record was
    recomputed. Use ``record.robust_accuracy_at(radius)`` / ``record.robust_curve(attack)`` for
    float-keyed robust accuracies.
    """
    from fabench.evaluation import DEFAULT_ATTACKS, RunConfig
    from fabench.evaluation import evaluate as _evaluate
    from fabench.records import default_results_dir

    cfg = RunConfig(task=task, recipe=recipe, seed=seed, attacks=DEFAULT_ATTACKS if attacks is None else tuple(attacks),
                    radii=None if radii is None else [float(r) for r in radii], n_eval=n_eval,
                    overrides=tuple((str(k), v) for k, v in (params or {}).items()),
                    data_dir=data_dir, cache_dir=cache_dir)
    out_dir = Path(out).expanduser() if out is not None else default_results_dir()
    record, _path, _reused = _evaluate(cfg, out_dir=out_dir, force=force, progress=progress, notice=notice)
    return record


def _names(kind: str, pattern: str) -> list[str]:
    from fabench import registry

    return registry.REGISTRIES[kind].names(pattern)


def list_tasks(pattern: str = "*") -> list[str]:
    """Names of the registered tasks (shell wildcard ``pattern``)."""
    return _names("tasks", pattern)


def list_recipes(pattern: str = "*") -> list[str]:
    """Names of the registered recipes (shell wildcard ``pattern``)."""
    return _names("recipes", pattern)


def list_attacks(pattern: str = "*") -> list[str]:
    """Names of the registered attacks (shell wildcard ``pattern``)."""
    return _names("attacks", pattern)


def task_variant(
    base: str,
    name: str,
    *,
    params: Mapping[str, Any] | None = None,
    radii: Sequence[float] | None = None,
    headline_radii: Sequence[float] | None = None,
    description: str = "",
    register: bool = True,
) -> "FileTask":
    """A variant of the task-file task ``base`` with other parameters and/or radii, without a TOML
    file. Registered under ``name`` (source ``variant:<base>``) unless ``register=False``."""
    import dataclasses

    from fabench import params as P
    from fabench import registry
    from fabench.errors import ConfigError
    from fabench.protocol import check_radii
    from fabench.taskfiles import FileTask, safe_name

    entry = registry.tasks.entry(base)
    if not isinstance(entry.obj, FileTask):
        raise ConfigError(f"task {base!r} is not defined by a task file; only those have variants")
    src: FileTask = entry.obj
    new_params = P.resolve(src.meta.params, dict(params or {}), owner=f"task {name}", bounds=src.meta.bounds,
                           choices=src.meta.choices)
    new_radii = check_radii(radii) if radii is not None else src.radii
    headline = tuple(float(r) for r in headline_radii) if headline_radii is not None else (
        tuple(r for r in src.headline_radii if r in new_radii) if radii is not None else src.headline_radii)
    source = f"variant:{base}"
    meta = dataclasses.replace(src.meta, name=safe_name(name, where="task variant"), params=new_params,
                               description=description or f"{src.meta.description} (variant of {base})",
                               source=source)
    variant = FileTask(meta, src.kind, new_radii, headline, src.recipe_defaults, src.path)
    if register:
        registry.tasks.register(variant, source=source)
    return variant
