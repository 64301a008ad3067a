"""Registries of tasks, recipes and attacks (timm-style), with entry-point discovery.

Built-ins register with a decorator; installed distributions add entries through the entry-point
groups ``fabench.tasks``, ``fabench.recipes`` and ``fabench.attacks``. Every entry carries a
:class:`~fabench.types.Meta` record. Names are listed with shell wildcards
(``fabench list 'mnist*'``); an unknown name raises :class:`~fabench.errors.UnknownNameError` with
the closest match. Two providers of one name are an error naming both unless the user picks one
as ``name@distribution``. Setting ``FABENCH_NO_PLUGINS=1`` turns entry-point loading off.

Importing a plugin runs its code, so a look-up imports only what it must: the entry points named
like the name looked up (listed from the distributions' metadata without importing anything). Only
listing (:meth:`Registry.names`, :meth:`Registry.entries`), or a name that neither a built-in nor a
same-named entry point provides, imports every entry point of the group (see :meth:`Registry.entry`).
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
    entry_point: str | None = None
    """The name of the entry point it was loaded from (``None``: registered directly, e.g. a built-in)."""

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
        self._builtins_loaded = False
        self._all_loaded = False
        self._entry_points: list[importlib.metadata.EntryPoint] | None = None
        self._imported: set[tuple[str, str, str]] = set()

    # -- registration -------------------------------------------------------------------------
    def register(self, obj: Any = None, *, source: str = BUILTIN_SOURCE) -> Any:
        """Register a class (instantiated with no arguments) or an instance; usable as decorator."""

        def add(o: Any) -> Any:
            self._register(o, source=source, entry_point=None)
            return o

        return add if obj is None else add(obj)

    def _register(self, o: Any, *, source: str, entry_point: str | None) -> None:
        inst = _instantiate(o)
        meta = getattr(inst, "meta", None)
        if not isinstance(meta, Meta):
            raise TypeError(f"{self.kind} {o!r} has no `meta: fabench.types.Meta` attribute")
        if meta.source != source:
            inst.meta = replace(meta, source=source)
        self._add(Entry(meta.name, inst, source, entry_point))

    def _add(self, entry: Entry[T]) -> None:
        providers = self._entries.setdefault(entry.name, [])
        providers[:] = [e for e in providers if e.source != entry.source]
        providers.append(entry)

    # -- discovery ----------------------------------------------------------------------------
    def _plugins_enabled(self) -> bool:
        return os.environ.get(PLUGINS_ENV, "").strip() in ("", "0", "false", "no")

    def _ensure_builtins(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            self._builtins()

    def _group_entry_points(self) -> list[importlib.metadata.EntryPoint]:
        """The group's entry points, read from the installed distributions' metadata (nothing is
        imported); ``[]`` when plugins are turned off."""
        if not self._plugins_enabled():
            return []
        if self._entry_points is None:
            self._entry_points = list(importlib.metadata.entry_points(group=self.group))
        return self._entry_points

    def _load_entry_point(self, ep: importlib.metadata.EntryPoint) -> None:
        """Import one entry point (once) and register what it names; a failure is a warning."""
        dist = ep.dist.name if ep.dist is not None else "unknown distribution"
        key = (dist, ep.name, ep.value)
        if key in self._imported:
            return
        self._imported.add(key)
        try:
            loaded = ep.load()
            self._register(loaded, source=dist, entry_point=ep.name)
        except (Exception, SystemExit) as exc:  # a broken plugin (even one calling sys.exit) must not break the others
            warnings.warn(
                f"fabench: could not load {self.kind} plugin {ep.name!r} "
                f"({ep.value}) from distribution {dist!r}: {type(exc).__name__}: {exc}",
                PluginWarning,
                stacklevel=2,
            )

    def _ensure_named(self, name: str) -> None:
        """The built-ins and the entry points named ``name`` (no other plugin is imported)."""
        self._ensure_builtins()
        for ep in self._group_entry_points():
            if ep.name == name:
                self._load_entry_point(ep)

    def _ensure_loaded(self) -> None:
        """The built-ins and every entry point of the group (for listing)."""
        self._ensure_builtins()
        if self._all_loaded:
            return
        self._all_loaded = True
        for ep in self._group_entry_points():
            self._load_entry_point(ep)

    @property
    def _loaded(self) -> bool:
        """Whether discovery has started; setting ``False`` makes the next use discover again, as in
        a fresh process (without :meth:`reload`'s immediate loading of the built-ins; the test
        corpus in ``tests/badinputs.py`` relies on it)."""
        return self._builtins_loaded

    @_loaded.setter
    def _loaded(self, value: bool) -> None:
        if not value:
            self._builtins_loaded = False
            self._all_loaded = False
            self._entry_points = None
            self._imported = set()

    def reload(self) -> None:
        """Forget plugin entries and discover them again (built-ins stay); plugins are imported
        again on demand, as after start-up."""
        self._entries = {
            n: [e for e in es if e.source == BUILTIN_SOURCE] for n, es in self._entries.items()
        }
        self._entries = {n: es for n, es in self._entries.items() if es}
        self._loaded = False
        self._ensure_builtins()

    # -- lookup -------------------------------------------------------------------------------
    def entries(self, pattern: str = "*") -> list[Entry[T]]:
        """All entries whose name matches the shell wildcard ``pattern``, sorted by name (imports
        every plugin of the group)."""
        self._ensure_loaded()
        out = [e for n in sorted(self._entries) if fnmatch.fnmatchcase(n, pattern)
               for e in self._entries[n]]
        return out

    def names(self, pattern: str = "*") -> list[str]:
        """The registered names matching ``pattern``, sorted (imports every plugin of the group)."""
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
        """The entry for ``name`` or ``name@distribution``, importing as few plugins as it can.

        The providers of ``name`` are the built-ins (and everything registered directly) and the
        plugins whose *entry point* is named ``name`` (the plugin guide asks for the entry point's
        name to equal ``meta.name``); only those entry points are imported. Fallback, for a plugin
        whose entry-point name differs from the name it registers: when these give no provider
        (or none from the ``@distribution`` asked for), every entry point of the group is imported
        and all of its providers count. A mismatched plugin therefore never joins (nor conflicts
        with) a name that a built-in or a same-named entry point provides, unless chosen as
        ``name@distribution``.
        """
        base, _, source = name.partition("@")
        self._ensure_named(base)
        providers = self._direct_providers(base)
        if not providers or (source and not self._pick(providers, source)):
            self._ensure_loaded()
            providers = list(self._entries.get(base, []))
        if not providers:
            known = self.names()
            close = difflib.get_close_matches(base, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {base!r}{hint} Known {self.kind}s: {', '.join(known)}"
            )
        if source:
            chosen = self._pick(providers, source)
            if chosen is not None:
                return chosen
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

    def _direct_providers(self, base: str) -> list[Entry[T]]:
        """Providers of ``base`` registered directly or through an entry point named ``base``."""
        return [e for e in self._entries.get(base, []) if e.entry_point is None or e.entry_point == base]

    @staticmethod
    def _pick(providers: list[Entry[T]], source: str) -> Entry[T] | None:
        for e in providers:
            if normalize_dist(e.source) == normalize_dist(source):
                return e
        return None

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
