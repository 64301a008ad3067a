"""Where a result's code came from: versions and code hashes that decide whether a record is reused.

A record's key hashes its configuration; its ``provenance`` says which code computed it: fabench's
version and a hash of its source files (less the :data:`PRESENTATION_MODULES`, which cannot change
a number), and for every distribution that provided the task, the
recipe or an attack, its version and a hash of the source files of the providing package (for a
task file, a hash of the file). A finished record is reused only when its provenance equals the
current one; otherwise :func:`describe_change` says why it is recomputed.

Hashes are computed once per process (a few dozen small files: milliseconds).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata as md
import importlib.util
import sys
from pathlib import Path
from typing import Any, Mapping

BUILTIN = "fabench"

#: fabench modules that cannot change a record's numbers (front ends, presentation, scheduling):
#: left out of fabench's code hash, so that editing them does not invalidate finished records.
PRESENTATION_MODULES = frozenset({
    "cli.py", "leaderboard.py", "plots.py", "progress.py", "sweep.py", "api.py", "audit.py", "errors.py",
    "__init__.py",
})


@functools.lru_cache(maxsize=None)
def package_hash(module: str) -> str:
    """SHA-256 (16 hex digits) of the source files (``*.py``, ``*.toml``) of ``module``'s top-level
    package, or of the module's file; ``"unknown"`` when it has no files on disk."""
    top = module.partition(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    files: list[Path] = []
    roots: list[Path] = []
    if spec is not None and spec.submodule_search_locations:
        roots = [Path(p) for p in spec.submodule_search_locations]
    elif spec is not None and spec.origin and spec.origin not in ("built-in", "frozen"):
        files = [Path(spec.origin)]
    if top == BUILTIN:  # the built-in task files are a package of their own
        extra = importlib.util.find_spec("fabench.builtin_tasks")
        if extra is not None and extra.submodule_search_locations:
            roots += [Path(p) for p in extra.submodule_search_locations]
    for root in roots:
        files += [f for f in root.rglob("*") if f.suffix in (".py", ".toml") and "__pycache__" not in f.parts
                  and not (top == BUILTIN and f.parent == root and f.name in PRESENTATION_MODULES)]
    if not files:
        return "unknown"
    h = hashlib.sha256()
    for f in sorted(set(files)):
        try:
            blob = f.read_bytes()
        except OSError:
            continue
        h.update(f.name.encode() + b"\0" + hashlib.sha256(blob).digest())
    return h.hexdigest()[:16]


def file_hash(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError:
        return "unreadable"


def dist_version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "unknown"


def fabench_provenance() -> dict[str, str]:
    from fabench import __version__

    return {"version": __version__, "code": package_hash(BUILTIN)}


def provenance(providers: Mapping[str, tuple[str, Any]]) -> dict[str, dict[str, str]]:
    """``{"fabench": {...}, <distribution or file:...>: {...}}`` for ``{role: (source, object)}``."""
    out: dict[str, dict[str, str]] = {BUILTIN: fabench_provenance()}
    for _role, (source, obj) in sorted(providers.items()):
        if source == BUILTIN or source in out:
            continue
        path = getattr(obj, "path", "")
        if source.startswith("file:") and path:
            out[f"file:{path}"] = {"sha256": file_hash(str(path))}
            continue
        module = type(obj).__module__ if not isinstance(obj, type) else obj.__module__
        if module in sys.builtin_module_names:
            module = ""
        code = package_hash(module) if module else "unknown"
        if module.partition(".")[0] == BUILTIN and path:  # e.g. a plugin's task file loaded by fabench
            code = file_hash(str(path))
        out[source] = {"version": dist_version(source), "code": code}
    return out


def describe_change(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    """Why a record of provenance ``old`` is not reused under ``new`` (empty when they are equal)."""
    if not old:
        return "it has no provenance (written by an older fabench)"
    reasons = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        what = "fabench" if name == BUILTIN else repr(name)
        if a is None or b is None:
            reasons.append(f"{what} {'no longer provides' if b is None else 'now provides'} part of it")
        elif a.get("version") != b.get("version"):
            reasons.append(f"{what} version changed ({a.get('version')} -> {b.get('version')})")
        else:
            reasons.append(f"{what} code changed")
    return "; ".join(reasons)
