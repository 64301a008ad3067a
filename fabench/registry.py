"""Registries of tasks, recipes and attacks (timm-style), with entry-point discovery.

Built-ins register with a decorator; installed distributions add entries through the entry-point
groups ``fabench.tasks``, ``fabench.recipes`` and ``fabench.attacks``. Every entry carries a
:class:`~fabench.types.Meta` record. Names are listed with shell wildcards
(``fabench list 'mnist*'``); an unknown name raises :class:`~fabench.errors.UnknownNameError` with
the closest match. Two providers of one name are an error naming both unless the user picks one
as ``name@distribution``. Setting ``FABENCH_NO_PLUGINS=1`` turns entry-point loading off.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.metadata
import logging
import os
import re
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, Generic, Iterator, TypeVar

from fabench.errors import PluginConflictError, UnknownNameError
from fabench.types import Meta

log = logging.getLogger(__name__)

T = TypeVar("T")

PLUGINS_ENV = "FABENCH_NO_PLUGINS"
BUILTIN_SOURCE = "fabench"


class PluginWarning(UserWarning):
    """A plugin failed to load; the other entries still work."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object and where it came from."""

    name: str
    obj: T
    source: str

    @property
    def meta(self) -> Meta:
        meta: Meta = getattr(self.obj, "meta")
        return meta


def normalize_dist(name: str) -> str:
    """PEP 503 normalisation: ``Fabench_Example.Plugin`` and ``fabench-example-plugin`` are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _instantiate(obj: Any) -> Any:
    return obj() if isinstance(obj, type) else obj


class Registry(Generic[T]):
    """A named collection of objects that carry a ``meta`` attribute.

    ``kind`` is the singular word used in messages (``"recipe"``); ``group`` the entry-point
    group. Built-in entries are added by :meth:`register`; plugins are discovered on first use.
    """

    def __init__(self, kind: str, group: str, builtins: Callable[[], None]) -> None:
        self.kind = kind
        self.group = group
        self._builtins = builtins
        self._entries: dict[str, list[Entry[T]]] = {}
        self._loaded = False

    # -- registration -------------------------------------------------------------------------
    def register(self, obj: Any = None, *, source: str = BUILTIN_SOURCE) -> Any:
        """Register a class (instantiated with no arguments) or an instance; usable as decorator."""

        def add(o: Any) -> Any:
            inst = _instantiate(o)
            meta = getattr(inst, "meta", None)
            if not isinstance(meta, Meta):
                raise TypeError(f"{self.kind} {o!r} has no `meta: fabench.types.Meta` attribute")
            if meta.source != source:
                inst.meta = replace(meta, source=source)
            self._add(Entry(meta.name, inst, source))
            return o

        return add if obj is None else add(obj)

    def _add(self, entry: Entry[T]) -> None:
        providers = self._entries.setdefault(entry.name, [])
        providers[:] = [e for e in providers if e.source != entry.source]
        providers.append(entry)

    # -- discovery ----------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        self._builtins()
        if os.environ.get(PLUGINS_ENV, "").strip() not in ("", "0", "false", "no"):
            return
        for ep in importlib.metadata.entry_points(group=self.group):
            dist = ep.dist.name if ep.dist is not None else "unknown distribution"
            try:
                loaded = ep.load()
                self.register(loaded, source=dist)
            except (Exception, SystemExit) as exc:  # a broken plugin (even one calling sys.exit) must not break the others
                warnings.warn(
                    f"fabench: could not load {self.kind} plugin {ep.name!r} "
                    f"({ep.value}) from distribution {dist!r}: {type(exc).__name__}: {exc}",
                    PluginWarning,
                    stacklevel=2,
                )

    def reload(self) -> None:
        """Forget plugin entries and discover them again (built-ins stay)."""
        self._entries = {
            n: [e for e in es if e.source == BUILTIN_SOURCE] for n, es in self._entries.items()
        }
        self._entries = {n: es for n, es in self._entries.items() if es}
        self._loaded = False
        self._ensure_loaded()

    # -- lookup -------------------------------------------------------------------------------
    def entries(self, pattern: str = "*") -> list[Entry[T]]:
        """All entries whose name matches the shell wildcard ``pattern``, sorted by name."""
        self._ensure_loaded()
        out = [e for n in sorted(self._entries) if fnmatch.fnmatchcase(n, pattern)
               for e in self._entries[n]]
        return out

    def names(self, pattern: str = "*") -> list[str]:
        self._ensure_loaded()
        return [n for n in sorted(self._entries) if fnmatch.fnmatchcase(n, pattern)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        try:
            self.get(str(name))
        except (UnknownNameError, PluginConflictError):
            return False
        return True

    def entry(self, name: str) -> Entry[T]:
        """The entry for ``name`` or ``name@distribution``."""
        self._ensure_loaded()
        base, _, source = name.partition("@")
        providers = self._entries.get(base)
        if not providers:
            known = self.names()
            close = difflib.get_close_matches(base, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {base!r}{hint} Known {self.kind}s: {', '.join(known)}"
            )
        if source:
            for e in providers:
                if normalize_dist(e.source) == normalize_dist(source):
                    return e
            raise UnknownNameError(
                f"{self.kind} {base!r} has no provider {source!r}; providers: "
                + ", ".join(e.source for e in providers)
            )
        if len(providers) > 1:
            raise PluginConflictError(
                f"{self.kind} {base!r} is provided by "
                + " and ".join(repr(e.source) for e in providers)
                + f"; choose one as {base}@<distribution>"
            )
        return providers[0]

    def get(self, name: str) -> T:
        return self.entry(name).obj


def _load_builtin_tasks() -> None:
    from fabench import taskfiles

    taskfiles.register_builtin_tasks()


def _load_builtin_recipes() -> None:
    importlib.import_module("fabench.recipes")


def _load_builtin_attacks() -> None:
    importlib.import_module("fabench.attacks")


tasks: Registry[Any] = Registry("task", "fabench.tasks", _load_builtin_tasks)
recipes: Registry[Any] = Registry("recipe", "fabench.recipes", _load_builtin_recipes)
attacks: Registry[Any] = Registry("attack", "fabench.attacks", _load_builtin_attacks)

REGISTRIES: dict[str, Registry[Any]] = {"tasks": tasks, "recipes": recipes, "attacks": attacks}
