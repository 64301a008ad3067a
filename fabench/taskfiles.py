"""Task definitions as data: ``tasks/*.toml`` files bound to task *kinds* implemented in code.

A task file names a ``kind`` (``synthetic``, ``mnist``, ``cifar10``, ...), overrides the kind's
parameters, and gives the radius grid and the recipes' task-specific defaults::

    name = "mnist-parity"
    kind = "mnist"
    description = "MNIST, even digits vs odd digits"
    reference = "real-data experiments"
    [params]
    positive_classes = [0, 2, 4, 6, 8]
    [radii]
    start = 0.0
    stop = 2.0
    step = 0.1
    headline = [0.4, 0.8, 1.2, 1.6, 2.0]
    [recipe_defaults."*"]      # every recipe that has these parameters
    optimizer = "adam"
    [recipe_defaults.binary]   # one recipe (wins over "*")
    m = 15

A new split of existing data is a new file and no code. Files in ``tasks/`` (shipped as
``fabench.builtin_tasks``) are registered at start; ``fabench evaluate --task path/to/file.toml``
evaluates a file directly; directories in ``FABENCH_TASKS_PATH`` (``os.pathsep``-separated) add more.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Protocol, TypeVar

from fabench import params as P
from fabench.errors import ConfigError, FabenchError, UnknownNameError
from fabench.types import Meta, Params, ProgressFn, TaskData, no_progress

TASKS_PATH_ENV = "FABENCH_TASKS_PATH"
#: The keys a task file may have at its top level, and in its ``[radii]`` table.
TOP_KEYS = ("name", "kind", "description", "reference", "params", "radii", "recipe_defaults")
RADII_KEYS = ("start", "stop", "step", "headline")
#: The longest task name (it is a directory name of the records).
MAX_NAME = 100
#: Radii are rounded to this many decimal places (hides float drift in ``start + i * step``).
RADIUS_DIGITS = 10


class TaskKind(Protocol):
    """Code that makes :class:`TaskData` for one family of tasks (one data source)."""

    name: ClassVar[str]
    defaults: ClassVar[Mapping[str, Any]]

    def load(
        self, params: Params, *, seed: int, data_dir: str | None, progress: ProgressFn
    ) -> TaskData:
        ...


TASK_KINDS: dict[str, type[TaskKind]] = {}
K = TypeVar("K", bound=type)


def task_kind(cls: K) -> K:
    """Class decorator: register a task kind under ``cls.name``."""
    TASK_KINDS[getattr(cls, "name")] = cls
    return cls


def _import_kinds() -> None:
    # Import the modules that define the built-in kinds (they register on import).
    import fabench.data  # noqa: F401


def radius_grid(start: float, stop: float, step: float) -> tuple[float, ...]:
    """``start, start+step, ..., stop`` (inclusive), rounded to :data:`RADIUS_DIGITS` decimal places
    to hide float drift; a grid that the rounding would move by more than a thousandth of its step
    (a step finer than the rounding: ``0:1e-11:1e-12`` would be all zeros) is refused."""
    from fabench.validation import check_grid_size

    n = check_grid_size(start, stop, step, what="radius grid") - 1  # refused before it is built
    exact = [start + i * step for i in range(n + 1)]
    grid = tuple(round(r, RADIUS_DIGITS) for r in exact)
    for r, g in zip(exact, grid):
        if abs(g - r) > 1e-3 * step:
            raise ConfigError(f"radius grid: radii are kept to {RADIUS_DIGITS} decimal places, too few for step "
                              f"{step:g} (radius {r:g} would become {g:g}); use a coarser step")
    return grid


@dataclass
class FileTask:
    """A registered task made from a task file: a kind plus parameters and radii."""

    meta: Meta
    kind: str
    radii: tuple[float, ...]
    headline_radii: tuple[float, ...]
    recipe_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    path: str = ""

    def defaults_for(self, recipe: str, known: Mapping[str, Any]) -> dict[str, Any]:
        """This task's defaults for ``recipe``: the ``"*"`` table (only the parameters the recipe
        has, so plugin recipes inherit e.g. the backbone) overridden by the recipe's own table."""
        shared = {k: v for k, v in self.recipe_defaults.get("*", {}).items() if k in known}
        return {**shared, **self.recipe_defaults.get(recipe, {})}

    def load(
        self,
        params: Params,
        *,
        seed: int,
        data_dir: str | None = None,
        progress: ProgressFn = no_progress,
    ) -> TaskData:
        _import_kinds()
        kind = TASK_KINDS[self.kind]()
        data = kind.load(params, seed=seed, data_dir=data_dir, progress=progress)
        return dataclasses.replace(
            data, name=self.meta.name, radii=self.radii, headline_radii=self.headline_radii
        )


def load_task_file(path: str | os.PathLike[str], *, source: str = "fabench") -> FileTask:
    """Read and validate one task file."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"task file {str(p)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"task file {str(p)!r} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"task file {str(p)!r} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"task file {str(p)!r} cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:  # a path the system refuses (a NUL character)
        raise ConfigError(f"task file {str(p)!r} cannot be read: {exc}") from None
    where = f"task file {str(p)!r}"
    _check_keys(raw, TOP_KEYS, where)
    for table in ("params", "radii", "recipe_defaults"):
        if not isinstance(raw.get(table, {}), dict):
            raise ConfigError(f"task file {str(p)!r}: [{table}] must be a table, got {raw[table]!r}")
    _check_keys(raw.get("radii", {}), RADII_KEYS, f"{where}: [radii]")
    for text_key in ("description", "reference"):
        if not isinstance(raw.get(text_key, ""), str):
            raise ConfigError(f"{where}: {text_key} must be a string, got {raw[text_key]!r}")
    _import_kinds()
    kind = raw.get("kind")
    if not isinstance(kind, str) or kind not in TASK_KINDS:  # a list or table is no kind either
        raise UnknownNameError(
            f"task file {str(p)!r}: unknown kind {kind!r}; known kinds: {', '.join(sorted(TASK_KINDS))}"
        )
    name = safe_name(raw.get("name", p.stem), where=f"task file {str(p)!r}")
    kind_cls = TASK_KINDS[kind]
    params = P.resolve(kind_cls.defaults, raw.get("params", {}), owner=f"task {name}",
                       bounds=getattr(kind_cls, "bounds", None), choices=getattr(kind_cls, "choices", None))
    rad = raw.get("radii", {})
    try:
        radii = radius_grid(*(_number(rad[k], f"[radii] {k}") for k in ("start", "stop", "step")))
        headline = _headline(rad["headline"], radii) if "headline" in rad else radii
    except KeyError as exc:
        raise ConfigError(f"task file {str(p)!r}: [radii] needs start, stop, step ({exc} missing)") from None
    except ConfigError as exc:
        raise ConfigError(f"task file {str(p)!r}: {exc}") from None
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"task file {str(p)!r}: [radii] start, stop, step and headline must be numbers") from None
    rd = raw.get("recipe_defaults", {})
    if not isinstance(rd, dict) or not all(isinstance(v, dict) for v in rd.values()):
        raise ConfigError(f"task file {str(p)!r}: [recipe_defaults.<recipe>] tables expected")
    for key in rd:
        if "@" in key:  # the defaults of a recipe apply whoever provides it
            raise ConfigError(f"{where}: [recipe_defaults] key {key!r}: recipe_defaults keys are recipe names, "
                              f"or \"*\", without @distribution (here {key.partition('@')[0]!r})")
    if source != "fabench":  # the shipped files name only built-in recipes
        _warn_unknown_recipes(rd, where)
    meta = Meta(
        name=name,
        description=raw.get("description", ""),
        reference=raw.get("reference", ""),
        params=params,
        source=source,
        bounds=dict(getattr(kind_cls, "bounds", {})),
        choices=dict(getattr(kind_cls, "choices", {})),
    )
    return FileTask(meta, kind, radii, headline, rd, str(p))


def safe_name(name: Any, *, where: str) -> str:
    """A task name that is also a safe path component (records are stored under it) and can be
    looked up (no ``@``: ``name@distribution`` picks a provider; not ``*.toml``: a task file's path):
    one line of at most :data:`MAX_NAME` printable characters."""
    text = str(name).strip() if isinstance(name, (str, int)) and not isinstance(name, bool) else ""
    if not text or text in (".", "..") or any(c in text for c in "/\\@\0") or text != str(name):
        raise ConfigError(f"{where}: name {name!r} must be a non-empty word without '/', '\\', '@' or "
                          "surrounding spaces, and not '.' or '..'")
    if text.endswith(".toml"):
        raise ConfigError(f"{where}: name {name!r} ends in '.toml', which --task reads as a task file's path")
    if not text.isprintable():
        raise ConfigError(f"{where}: name {name!r} has a line break or another control character")
    if len(text) > MAX_NAME:
        raise ConfigError(f"{where}: name is {len(text)} characters long; at most {MAX_NAME}")
    return text


def _check_keys(table: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    """Every key of ``table`` among ``allowed``, or a ConfigError naming the first other one."""
    import difflib

    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}; allowed: {', '.join(allowed)}")


def _number(value: Any, what: str) -> float:
    """A TOML integer or float (not a boolean, not text) as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what} must be a number, got {value!r}")
    return float(value)


def _headline(value: Any, radii: tuple[float, ...]) -> tuple[float, ...]:
    """``headline``: a non-empty list of finite non-negative radii of the grid (snapped to the grid's
    own values)."""
    import math

    if not isinstance(value, list) or not value:
        raise ConfigError(f"[radii] headline must be a non-empty list of radii of the grid, got {value!r}")
    out = []
    for h in value:
        r = _number(h, "[radii] headline radius")
        if not math.isfinite(r) or r < 0:
            raise ConfigError(f"[radii] headline radius {h!r} must be finite and non-negative")
        near = min(radii, key=lambda g: abs(g - r))  # the nearest: a fine grid has several within 1e-9
        if abs(near - r) > 1e-9 * max(1.0, abs(near)):
            raise ConfigError(f"[radii] headline radius {h!r} is not on the grid "
                              f"({radii[0]:g} to {radii[-1]:g} in steps; headline radii must be grid radii)")
        out.append(near)
    return tuple(dict.fromkeys(out))


def _warn_unknown_recipes(tables: Mapping[str, Any], where: str) -> None:
    """One warning line naming the ``[recipe_defaults.X]`` tables of recipes that are not registered
    (nothing is refused: the recipe may come from a plugin that is not installed here)."""
    from fabench import registry

    reg = registry.recipes
    reg._ensure_builtins()
    known = set(reg._entries) | {ep.name for ep in reg._group_entry_points()}
    unknown = sorted(n for n in tables if n != "*" and n not in known)
    if unknown:
        warnings.warn(f"{where}: [recipe_defaults] names recipes that are not registered here: "
                      f"{', '.join(unknown)} (a plugin not installed?); their defaults are unused",
                      registry.PluginWarning, stacklevel=3)


def builtin_task_files() -> list[Path]:
    """The task files shipped with fabench (``tasks/`` in the repository)."""
    root = importlib.resources.files("fabench.builtin_tasks")
    return sorted(Path(str(f)) for f in root.iterdir() if f.name.endswith(".toml"))


def extra_task_files() -> list[Path]:
    out: list[Path] = []
    for d in os.environ.get(TASKS_PATH_ENV, "").split(os.pathsep):
        if d and Path(d).is_dir():
            out.extend(sorted(Path(d).glob("*.toml")))
    return out


def register_builtin_tasks(register: Callable[..., Any] | None = None) -> None:
    from fabench import registry

    reg = register or registry.tasks.register
    for f in builtin_task_files():
        reg(load_task_file(f))
    for f in extra_task_files():
        try:
            task = load_task_file(f, source=f"file:{f.parent}")
        except FabenchError as exc:  # one bad file on the path must not break every command
            warnings.warn(f"fabench: skipping task file from {TASKS_PATH_ENV}: {exc}", registry.PluginWarning,
                          stacklevel=2)
            continue
        reg(task, source=f"file:{f.parent}")
