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
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from fabench.errors import ConfigError
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
    float-keyed robust accuracies. An argument of the wrong type is a ConfigError, before any work.
    """
    from fabench.evaluation import DEFAULT_ATTACKS, RunConfig
    from fabench.evaluation import evaluate as _evaluate
    from fabench.protocol import check_radii
    from fabench.records import default_results_dir

    task_ref = _task_file(task) if isinstance(task, os.PathLike) else _text(task, "task")
    if not isinstance(force, bool) or not callable(progress) or not (notice is None or callable(notice)):
        raise ConfigError("force must be a bool, progress a callable and notice a callable or None, got "
                          f"{force!r}, {progress!r}, {notice!r}")
    cfg = RunConfig(task=task_ref, recipe=_text(recipe, "recipe"), seed=seed,
                    attacks=DEFAULT_ATTACKS if attacks is None else _texts(attacks, "attacks"),
                    radii=None if radii is None else check_radii(radii), n_eval=n_eval,
                    overrides=tuple(_mapping(params, "params").items()),
                    data_dir=_path(data_dir, "data_dir"), cache_dir=_path(cache_dir, "cache_dir"))
    out_path = _path(out, "out")
    out_dir = Path(out_path).expanduser() if out_path is not None else default_results_dir()
    record, _where, _reused = _evaluate(cfg, out_dir=out_dir, force=force, progress=progress, notice=notice)
    return record


def _text(value: object, what: str) -> str:
    """``value`` if it is a str without NUL characters (a name, a path), else a ConfigError."""
    if not isinstance(value, str) or "\0" in value:
        raise ConfigError(f"{what} must be a str without NUL characters, got {value!r}")
    return value


def _path(value: object, what: str) -> str | None:
    """A directory given as a str or an ``os.PathLike`` (``None`` stays ``None``), else a ConfigError."""
    if value is None:
        return None
    return _text(os.fspath(value) if isinstance(value, os.PathLike) else value, what)


def _task_file(value: "os.PathLike[str]") -> str:
    """A task given as a path: a task file (``*.toml``)."""
    path = _text(os.fspath(value), "task")
    if not path.endswith(".toml"):
        raise ConfigError(f"task {value!r}: a path must be a task file (*.toml); name a registered task by a str")
    return path


def _texts(value: object, what: str) -> tuple[str, ...]:
    """Names given as a list (or another iterable, not one str) of str, else a ConfigError."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigError(f"{what} must be a list of names, got {value!r}")
    return tuple(_text(v, f"{what}: each name") for v in value)


def _mapping(value: object, what: str) -> dict[str, Any]:
    """A mapping of parameter names (str) to values (``None``: empty), else a ConfigError."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a mapping of parameter names to values, got {value!r}")
    return {_text(k, f"{what}: each name"): v for k, v in value.items()}


def _names(kind: str, pattern: str) -> list[str]:
    from fabench import registry

    return registry.REGISTRIES[kind].names(_text(pattern, "pattern"))


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
    file. Registered under ``name`` (source ``variant:<base>``) unless ``register=False``.

    ``name`` must be a safe task name (as a task file's) that no other task has (a variant of the
    same ``base`` under its own name is replaced); ``headline_radii``, if given, a non-empty list of
    radii of the grid, as a task file's ``headline``. Anything else is a ConfigError."""
    import dataclasses

    from fabench import params as P
    from fabench import registry
    from fabench.protocol import check_radii
    from fabench.taskfiles import FileTask, _headline, safe_name

    name = safe_name(name, where="task variant")
    if not isinstance(description, str) or not isinstance(register, bool):
        raise ConfigError(f"task variant {name!r}: description must be a str and register a bool, got "
                          f"{description!r}, {register!r}")
    source = f"variant:{_text(base, 'task variant: base')}"
    taken = sorted({e.source for e in registry.tasks.entries() if e.name == name} - {source})
    if taken:
        raise ConfigError(f"task variant {name!r}: a task of that name is already registered (from "
                          f"{', '.join(map(repr, taken))}); choose another name")
    entry = registry.tasks.entry(base)
    if not isinstance(entry.obj, FileTask):
        raise ConfigError(f"task {base!r} is not defined by a task file; only those have variants")
    src: FileTask = entry.obj
    new_params = P.resolve(src.meta.params, _mapping(params, "params"), owner=f"task {name}",
                           bounds=src.meta.bounds, choices=src.meta.choices)
    new_radii = check_radii(radii) if radii is not None else src.radii
    if headline_radii is None:
        headline = tuple(r for r in src.headline_radii if r in new_radii) if radii is not None else src.headline_radii
    else:  # checked as a task file's [radii] headline
        if isinstance(headline_radii, (str, bytes)) or not isinstance(headline_radii, Iterable):
            raise ConfigError(f"task variant {name!r}: headline_radii must be a list of radii, got {headline_radii!r}")
        try:
            headline = _headline(list(headline_radii), new_radii)
        except ConfigError as exc:
            raise ConfigError(f"task variant {name!r}: {exc}") from None
    meta = dataclasses.replace(src.meta, name=name, params=new_params,
                               description=description or f"{src.meta.description} (variant of {base})",
                               source=source)
    variant = FileTask(meta, src.kind, new_radii, headline, src.recipe_defaults, src.path)
    if register:
        registry.tasks.register(variant, source=source)
    return variant
