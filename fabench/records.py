"""Result records: one JSON file per (task, recipe, seed, full configuration).

A record holds the full resolved configuration (so every result is reproducible from it), the
numbers, timings and versions. Its ``key`` is a hash of the configuration alone, so a rerun with
the same configuration finds the finished record and reuses it. Files are written atomically
(temporary file in the same directory, then ``os.replace``): an interrupted run leaves no partial
record. Radii are JSON object keys formatted with :func:`radius_key`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from fabench.errors import ConfigError

SCHEMA_VERSION = 1
"""Part of every configuration (and so of every key): bump it with any change to fabench that
alters results for unchanged parameters (attack semantics, training code), so that finished
records of the old code are no longer reused."""
RESULTS_ENV = "FABENCH_RESULTS"


def default_results_dir() -> Path:
    """``$FABENCH_RESULTS``, else ``$XDG_DATA_HOME/fabench/results`` (``~/.local/share/...``)."""
    env = os.environ.get(RESULTS_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fabench" / "results"


def radius_key(r: float) -> str:
    """The JSON key of a radius: shortest exact decimal (``10``, ``0.4``)."""
    return format(float(r), "g") if float(r) == round(float(r), 6) else repr(float(r))


def _jsonable(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def config_key(config: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a configuration."""
    blob = json.dumps(_jsonable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Record:
    """One evaluation: a configuration and what the protocol measured."""

    task: str
    recipe: str
    seed: int
    config: dict[str, Any]
    clean_accuracy: float
    robust_accuracy: dict[str, dict[str, float]]
    median_min_distance: float | None
    median_distance: dict[str, float | None]
    fa_score: float | None
    cosine_matrix: dict[str, Any]
    n_eval: int
    attacks: list[str]
    radii: list[float]
    headline_radii: list[float]
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    data_info: dict[str, Any] = field(default_factory=dict)
    model_info: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    feature_space: dict[str, Any] = field(default_factory=dict)
    """The same protocol on the head alone, in its input space (only for heads on a backbone):
    ``clean_accuracy``, ``robust_accuracy``, ``median_distance`` per attack and ``worst``,
    ``radii``, ``headline_radii``, ``scale`` (see :func:`fabench.evaluation.feature_space_protocol`)."""
    created: str = ""
    key: str = ""
    schema: int = SCHEMA_VERSION

    @property
    def params(self) -> dict[str, Any]:
        return self.config

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = _jsonable(dataclasses.asdict(self))
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Record":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = {"task", "recipe", "seed", "config", "robust_accuracy"} - set(obj)
        if missing:
            raise ConfigError(f"not a fabench record (missing {', '.join(sorted(missing))})")
        return cls(**{k: v for k, v in obj.items() if k in names})


def record_path(out_dir: Path, task: str, recipe: str, seed: int, key: str) -> Path:
    safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "_" for c in s)  # noqa: E731
    return out_dir / safe(task) / safe(recipe) / f"seed{seed}-{key[:16]}.json"


def check_writable(out_dir: Path) -> None:
    """Create ``out_dir`` and prove it is writable, before any work is done."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".probe-", delete=True):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write results to {str(out_dir)!r}: {exc.strerror or exc}") from None


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_record(record: Record, out_dir: Path) -> Path:
    path = record_path(out_dir, record.task, record.recipe, record.seed, record.key)
    write_atomic(path, json.dumps(record.to_json(), indent=1) + "\n")
    return path


def read_record(path: Path) -> Record:
    try:
        return Record.from_json(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{str(path)!r} is not valid JSON: {exc}") from None


def find_record(out_dir: Path, task: str, recipe: str, seed: int, key: str) -> Record | None:
    """The finished record of this configuration, if one was written."""
    path = record_path(out_dir, task, recipe, seed, key)
    if not path.is_file():
        return None
    try:
        rec = read_record(path)
    except ConfigError:
        return None
    return rec if rec.key == key and rec.schema == SCHEMA_VERSION else None


def iter_records(root: Path) -> Iterator[tuple[Path, Record]]:
    """Every record below ``root`` (sorted by path; unreadable files are skipped)."""
    for path in sorted(root.rglob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            yield path, read_record(path)
        except ConfigError:
            continue


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("fabench", "torch", "torchvision", "foolbox", "numpy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out
