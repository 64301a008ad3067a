"""Where a result's code came from: versions and code hashes that decide whether a record is reused.

A record's key hashes its configuration; its ``provenance`` says which code computed it:

- ``fabench``: its version and a hash of its source files (``*.py``, ``*.toml``, less the
  :data:`PRESENTATION_MODULES`, which cannot change a number);
- ``dependencies``: the versions of the libraries that compute the numbers (:data:`DEPENDENCIES`)
  and a hash of the ``*.py`` files of the pure-Python attack libraries (:data:`CODE_HASHED`), the files
  that ``import`` would load (a shadowing copy earlier on ``sys.path`` counts, whatever its version
  says); ``"missing"`` for one that is not installed;
- for every distribution that provided the task, the recipe or an attack: its version and a hash of
  every file of the providing package (but ``__pycache__``) and of the source and data files its
  installation lists (``RECORD``: top-level helper modules, data files; not its ``*.dist-info``,
  compiled ``*.pyc``, ``*.pth`` files or editable-install hooks, which hold absolute paths). For a
  task file, a hash of the file.

Code outside these files is not tracked: e.g. a module of another distribution that a plugin
imports (other than the :data:`DEPENDENCIES`), or, for an editable install, source files outside
the providing package that the installation does not list. A finished record is reused only when
its provenance equals the current one; otherwise :func:`describe_change` says why it is recomputed.
The record's key does not depend on any of this.

Hashes are computed once per process without importing anything (``importlib.util.find_spec``
and the distributions' metadata; a few hundred small files: milliseconds); :func:`clear_caches`
forgets them.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata as md
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Mapping

BUILTIN = "fabench"

DEPENDENCIES_KEY = "dependencies"
"""The provenance entry of the :data:`DEPENDENCIES`."""

#: Distributions whose versions are part of every provenance: what trains and attacks the models.
DEPENDENCIES = ("torch", "torchvision", "numpy", "foolbox", "eagerpy", "pyautoattack")

#: Pure-Python attack libraries (distribution -> import name) whose code (``*.py`` files: not, e.g.,
#: pyautoattack's 45 MB example model) is hashed as well: a copy with the same version string but
#: other code must not pass for the real one.
CODE_HASHED = {"foolbox": "foolbox", "eagerpy": "eagerpy", "pyautoattack": "pyautoattack"}

MISSING = "missing"
"""The version and code of a dependency that is not installed."""

#: fabench modules that cannot change a record's numbers (front ends, presentation, scheduling):
#: left out of fabench's code hash, so that editing them does not invalidate finished records.
PRESENTATION_MODULES = frozenset({
    "cli.py", "leaderboard.py", "plots.py", "progress.py", "sweep.py", "api.py", "audit.py", "errors.py",
    "__init__.py", "_entry.py", "__main__.py",
})


def _compiled(parts: tuple[str, ...], suffix: str) -> bool:
    return "__pycache__" in parts or suffix in (".pyc", ".pyo")


def _package_files(top: str, *, sources_only: bool = False) -> dict[str, Path]:
    """``{label: path}`` of the files of the top-level package or module ``top`` (labels are
    paths relative to the directory holding it, so the hash does not depend on where it is);
    with ``sources_only``, its ``*.py`` files."""
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    files: dict[str, Path] = {}
    roots: list[Path] = []
    if spec is not None and spec.submodule_search_locations:
        roots = [Path(p) for p in spec.submodule_search_locations]
    elif spec is not None and spec.origin and spec.origin not in ("built-in", "frozen"):
        origin = Path(spec.origin)
        files[origin.name] = origin
    if top == BUILTIN:  # the built-in task files are a package of their own
        extra = importlib.util.find_spec("fabench.builtin_tasks")
        if extra is not None and extra.submodule_search_locations:
            roots += [Path(p) for p in extra.submodule_search_locations]
    for root in roots:  # os.walk, not Path.rglob: a third of the time (it runs on every command)
        for here, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            rel = os.path.relpath(here, root).replace(os.sep, "/")
            prefix = f"{root.name}/" if rel == "." else f"{root.name}/{rel}/"
            for name in names:
                suffix = os.path.splitext(name)[1]
                if suffix in (".pyc", ".pyo") or (sources_only and suffix != ".py"):
                    continue
                if top == BUILTIN and (suffix not in (".py", ".toml") or (rel == "." and name in PRESENTATION_MODULES)):
                    continue
                files.setdefault(prefix + name, Path(here, name))
    return files


def _distribution_files(dist: str) -> dict[str, Path]:
    """``{label: path}`` of the source and data files that distribution ``dist``'s ``RECORD`` lists
    (labels relative to its site directory); ``{}`` for a distribution that is not installed or
    lists none."""
    try:
        d = md.distribution(dist)
        listed = d.files or []
    except (md.PackageNotFoundError, ValueError, OSError):
        return {}
    files: dict[str, Path] = {}
    for f in listed:
        parts = tuple(f.parts)
        if (not parts or parts[0] == ".." or parts[0].endswith((".dist-info", ".egg-info"))
                or _compiled(parts, f.suffix) or f.suffix == ".pth" or f.name.startswith("__editable__")):
            continue  # metadata, scripts outside the site directory, compiled files, install hooks
        files[f.as_posix()] = Path(str(d.locate_file(f)))
    return files


def _digest(files: Mapping[str, Path]) -> str:
    h = hashlib.sha256()
    for label in sorted(files):
        try:
            content = hashlib.sha256(files[label].read_bytes()).digest()
        except OSError:
            content = b"unreadable"
        h.update(label.encode() + b"\0" + content)
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def package_hash(module: str, distribution: str | None = None, *, sources_only: bool = False) -> str:
    """SHA-256 (16 hex digits) of every file of ``module``'s top-level package but ``__pycache__``
    (or of the module's file; for fabench itself, its ``*.py``/``*.toml`` files less the
    :data:`PRESENTATION_MODULES`; with ``sources_only``, its ``*.py`` files) and, with
    ``distribution``, of the files its ``RECORD`` lists (see :func:`_distribution_files`);
    ``"unknown"`` when there are no files. Nothing is imported."""
    files = _package_files(module.partition(".")[0], sources_only=sources_only) if module else {}
    if distribution is not None:
        files = {**_distribution_files(distribution), **files}
    return _digest(files) if files else "unknown"


def file_hash(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError:
        return "unreadable"


def dist_version(dist: str, default: str = "unknown") -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return default


def fabench_provenance() -> dict[str, str]:
    from fabench import __version__

    return {"version": __version__, "code": package_hash(BUILTIN)}


@functools.lru_cache(maxsize=1)
def _dependency_provenance() -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    out = []
    for dist in DEPENDENCIES:
        entry = {"version": dist_version(dist, MISSING)}
        if dist in CODE_HASHED:
            code = package_hash(CODE_HASHED[dist], sources_only=True)
            entry["code"] = MISSING if code == "unknown" else code
        out.append((dist, tuple(entry.items())))
    return tuple(out)


def dependency_provenance() -> dict[str, dict[str, str]]:
    """``{distribution: {"version": ..., "code": ...}}`` of the :data:`DEPENDENCIES` (``code`` only
    for the :data:`CODE_HASHED` ones; ``"missing"`` for what is not installed). Imports nothing."""
    return {dist: dict(entry) for dist, entry in _dependency_provenance()}


def clear_caches() -> None:
    """Forget the hashes and versions computed so far (after files changed within this process)."""
    package_hash.cache_clear()
    _dependency_provenance.cache_clear()


def provenance(providers: Mapping[str, tuple[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{"fabench": {...}, "dependencies": {...}, <distribution or file:...>: {...}}`` for
    ``{role: (source, object)}``."""
    out: dict[str, dict[str, Any]] = {BUILTIN: fabench_provenance(), DEPENDENCIES_KEY: dependency_provenance()}
    for _role, (source, obj) in sorted(providers.items()):
        key = f"distribution:{source}" if source == DEPENDENCIES_KEY else source  # never the dependencies' entry
        if source == BUILTIN or key in out:
            continue
        path = getattr(obj, "path", "")
        if source.startswith("file:") and path:
            out[f"file:{path}"] = {"sha256": file_hash(str(path))}
            continue
        module = type(obj).__module__ if not isinstance(obj, type) else obj.__module__
        if module in sys.builtin_module_names:
            module = ""
        if module.partition(".")[0] == BUILTIN and path:  # e.g. a plugin's task file loaded by fabench
            code = f"{package_hash('', source)}+{file_hash(str(path))}"
        else:
            code = package_hash(module, source)
        out[key] = {"version": dist_version(source), "code": code}
    return out


def _describe_dependencies(old: Any, new: Any) -> list[str]:
    if not isinstance(old, Mapping):
        return ["it has no record of its dependencies' versions and code (written by an older fabench)"]
    if not isinstance(new, Mapping):
        return ["dependencies changed"]
    reasons = []
    for dist in sorted(set(old) | set(new)):
        a, b = old.get(dist), new.get(dist)
        if a == b:
            continue
        a = a if isinstance(a, Mapping) else {}
        b = b if isinstance(b, Mapping) else {}
        if a.get("version") != b.get("version"):
            reasons.append(f"{dist} version changed ({a.get('version', MISSING)} -> {b.get('version', MISSING)})")
        elif a.get("code") != b.get("code"):
            reasons.append(f"dependency {dist} code changed")
        else:
            reasons.append(f"dependency {dist} changed")
    return reasons


def describe_change(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    """Why a record of provenance ``old`` is not reused under ``new`` (empty when they are equal)."""
    if not old:
        return "it has no provenance (written by an older fabench)"
    reasons = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        if name == DEPENDENCIES_KEY:
            reasons += _describe_dependencies(a, b)
            continue
        what = "fabench" if name == BUILTIN else repr(name)
        if a is None or b is None:
            reasons.append(f"{what} {'no longer provides' if b is None else 'now provides'} part of it")
        elif not isinstance(a, Mapping) or not isinstance(b, Mapping):
            reasons.append(f"{what} changed")
        elif a.get("version") != b.get("version"):
            reasons.append(f"{what} version changed ({a.get('version')} -> {b.get('version')})")
        else:
            reasons.append(f"{what} code changed")
    return "; ".join(reasons)
