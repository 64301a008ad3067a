"""Result records: one JSON file per (task, recipe, seed, full configuration).

A record holds the full resolved configuration (so every result is reproducible from it), the
numbers, timings and versions. Its ``key`` is a hash of the configuration alone (it names the
file), so a rerun with the same configuration finds the finished record; it is reused only when
its ``provenance`` (versions and code hashes, :mod:`fabench.provenance`) is the current one, and
recomputed (same file) otherwise. Files are written atomically
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
import stat
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from fabench.errors import ConfigError, RecordWriteError

SCHEMA_VERSION = 2
"""Part of every configuration (and so of every key): bump it with any change to fabench that
alters results for unchanged parameters (attack semantics, training code), so that finished
records of the old code are no longer reused."""
RESULTS_ENV = "FABENCH_RESULTS"
PROBE_BYTES = 1 << 20
"""Bytes the writability probe writes and syncs (more than any record takes)."""
MAX_RECORD_BYTES = 32 << 20
"""The largest record (or ``.audit``) file fabench reads (:func:`read_record_text`): a record takes
tens of kilobytes (its cosine matrix at most a few hundred), so anything larger is not one."""


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
    provenance: dict[str, Any] = field(default_factory=dict)
    """fabench's and every providing distribution's version and code hash (see :mod:`fabench.provenance`)."""
    runtime: dict[str, Any] = field(default_factory=dict)
    """How it was computed, outside the key: ``device``, CPU ``threads``, attack ``batch_size``."""
    verified_attacks: list[str] = field(default_factory=list)
    """Attacks whose every claim came with an adversarial example that fabench checked on the model."""
    task_recipe_defaults: dict[str, Any] = field(default_factory=dict)
    """Recipe parameters the task file set (``[recipe_defaults]``), before ``--set`` (for the report)."""
    certified: dict[str, Any] = field(default_factory=dict)
    """Certified robust accuracy per radius (:mod:`fabench.certify`), its ``space`` and ``method``;
    empty when the model has no certificate."""
    flags: dict[str, Any] = field(default_factory=dict)
    """Sanity flags (:mod:`fabench.flags`): weak attacks, masking, the bracket's gap."""

    @property
    def params(self) -> dict[str, Any]:
        return self.config

    def robust_accuracy_at(self, radius: float, attack: str = "worst") -> float:
        """Robust accuracy of ``attack`` (default: the per-point worst case) at ``radius``.

        ``radius`` must be one of the record's radii (compared as floats, not as JSON keys)."""
        table = self.robust_accuracy[attack]
        for r in self.radii:
            if math.isclose(float(r), float(radius), rel_tol=1e-9, abs_tol=1e-12):
                return float(table[radius_key(r)])
        raise KeyError(f"radius {radius!r} is not among the record's radii {self.radii}")

    def robust_curve(self, attack: str = "worst") -> dict[float, float]:
        """``{radius: robust accuracy}`` with float radii, in increasing order."""
        return {float(r): float(self.robust_accuracy[attack][radius_key(r)]) for r in self.radii}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = _jsonable(dataclasses.asdict(self))
        return out

    @classmethod
    def from_json(cls, obj: Any) -> "Record":
        if not isinstance(obj, Mapping):
            kind = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string",
                    list: "array"}.get(type(obj), type(obj).__name__)
            raise ConfigError(f"not a fabench record (a JSON {kind}, not an object)")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = {"task", "recipe", "seed", "config", "robust_accuracy", "radii", "attacks",
                   "clean_accuracy"} - set(obj)
        if missing:
            raise ConfigError(f"not a fabench record (missing {', '.join(sorted(missing))})")
        rec = cls(**{k: v for k, v in obj.items() if k in names})
        rec._check_types()
        return rec

    def _check_types(self) -> None:
        """Refuse a record whose fields have the wrong JSON types (it would crash its readers)."""
        ok = (isinstance(self.task, str) and isinstance(self.recipe, str) and isinstance(self.seed, int)
              and isinstance(self.config, dict) and isinstance(self.robust_accuracy, dict)
              and all(isinstance(v, dict) for v in self.robust_accuracy.values())
              and isinstance(self.radii, list) and all(isinstance(r, (int, float)) for r in self.radii)
              and isinstance(self.attacks, list) and isinstance(self.schema, int)
              and isinstance(self.clean_accuracy, (int, float)) and isinstance(self.cosine_matrix, dict)
              and isinstance(self.headline_radii, list) and isinstance(self.data_info, dict))
        if not ok:
            raise ConfigError("not a fabench record (fields of the wrong type)")


def _safe_component(s: str) -> str:
    out = "".join(c if c.isalnum() or c in "-_." else "_" for c in s)
    return out if out.strip(".") else "_" * max(1, len(out))  # never "", "." or ".."


def record_path(out_dir: Path, task: str, recipe: str, seed: int, key: str) -> Path:
    safe = _safe_component
    return out_dir / safe(task) / safe(recipe) / f"seed{seed}-{key[:16]}.json"


def check_writable(out_dir: Path) -> None:
    """Create ``out_dir`` and prove it is writable, before any work is done."""
    try:
        if out_dir.exists() and not out_dir.is_dir():
            raise ConfigError(f"cannot write results to {str(out_dir)!r}: it is a file, not a directory")
        out_dir.mkdir(parents=True, exist_ok=True)
        # A real probe: write (and sync) as much as a large record takes, so a full disk is found now.
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".probe-", delete=True) as fh:
            fh.write(b"\0" * PROBE_BYTES)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise ConfigError(f"cannot write results to {str(out_dir)!r}: {exc.strerror or exc}") from None


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one.

    The file gets the usual mode of a new file (``0666`` less the umask; mkstemp's is ``0600``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_record_or_keep(record: Record, out_dir: Path) -> Path:
    """:func:`write_record`; when that fails, keep the record in a fallback file (in the temporary
    directory) and raise a :class:`RecordWriteError` naming it (``fallback=None``: the caller must
    print ``record``). Nothing computed is lost."""
    try:
        return write_record(record, out_dir)
    except OSError as exc:
        reason = exc.strerror or str(exc)
    except Exception as exc:  # e.g. a plugin's model_info that JSON cannot encode
        reason = f"{type(exc).__name__}: {exc}"
    fallback = Path(tempfile.gettempdir()) / f"fabench-unsaved-{record.task}-{record.recipe}-seed{record.seed}-{record.key[:16]}.json"
    try:
        write_atomic(fallback, json.dumps(record.to_json(), indent=1, default=str) + "\n")
    except Exception:
        raise RecordWriteError(f"cannot write the record to {str(out_dir)!r} ({reason}); nothing else was "
                               "writable either, so the record is printed on stdout", record=record) from None
    raise RecordWriteError(f"cannot write the record to {str(out_dir)!r} ({reason}); it was kept in "
                           f"{str(fallback)!r}", record=record, fallback=fallback)


class RecordWarning(UserWarning):
    """A file below a results directory is not a readable record of this schema; it is skipped."""


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def read_record_text(path: Path) -> str:
    """The text of the record (or ``.audit``) file ``path``, or a one-line ConfigError that starts
    with the quoted path: a file that cannot be read, is not UTF-8, is not a regular file (a FIFO
    or a device would block or never end) or holds more than :data:`MAX_RECORD_BYTES`. The last
    two are refused before anything is read, and never more than the limit is read."""
    where = repr(str(path))
    try:
        mode = os.stat(path).st_mode
        kind = next((what for test, what in _FILE_KINDS if test(mode)), None if stat.S_ISREG(mode) else "not a file")
        if kind is not None:
            raise ConfigError(f"{where} is {kind}, not a record file")
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as fh:  # never blocks, even if swapped for a FIFO
            size = os.fstat(fh.fileno()).st_size
            blob = fh.read(MAX_RECORD_BYTES + 1) if size <= MAX_RECORD_BYTES else b""
        if max(size, len(blob)) > MAX_RECORD_BYTES:
            raise ConfigError(f"{where} is too large for a record file ({max(size, len(blob))} bytes; "
                              f"at most {MAX_RECORD_BYTES})")
        return blob.decode("utf-8")
    except ConfigError:
        raise
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise ConfigError(f"{where} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None


def read_record(path: Path) -> Record:
    text = read_record_text(path)
    try:
        return Record.from_json(json.loads(text))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{str(path)!r} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{str(path)!r} is not a fabench record (nested too deeply)") from None
    except ConfigError as exc:
        raise ConfigError(f"{str(path)!r}: {exc}") from None


def find_record(out_dir: Path, task: str, recipe: str, seed: int, key: str) -> Record | None:
    """The finished record of this configuration, if one was written."""
    path = record_path(out_dir, task, recipe, seed, key)
    try:
        if not path.is_file():
            return None
    except OSError:  # a path the system refuses (a name too long): nothing finished there; writing says why
        return None
    try:
        rec = read_record(path)
    except ConfigError:
        return None
    return rec if rec.key == key and rec.schema == SCHEMA_VERSION else None


def iter_record_paths(root: Path) -> Iterator[Path]:
    """Every file below ``root`` that may hold a record, sorted by path: ``*.json``, not hidden
    (:func:`record_path` never names a record so), not a directory. Nothing is read: each reader
    (:func:`iter_records`, :func:`fabench.leaderboard.iter_trusted`) decides what it accepts."""
    for path in sorted(root.rglob("*.json")):
        if not path.name.startswith(".") and path.is_file():
            yield path


def iter_records(root: Path) -> Iterator[tuple[Path, Record]]:
    """Every record of this schema below ``root`` (sorted by path, :func:`iter_record_paths`).
    Unreadable files and records of another schema are skipped, each with one :class:`RecordWarning`
    naming it (never averaged in)."""
    for path in iter_record_paths(root):
        try:
            rec = read_record(path)
        except ConfigError as exc:
            warnings.warn(f"fabench: skipping {exc}", RecordWarning, stacklevel=2)
            continue
        if rec.schema != SCHEMA_VERSION:
            warnings.warn(f"fabench: skipping {str(path)!r}: a record of schema {rec.schema}, "
                          f"this fabench reads schema {SCHEMA_VERSION}", RecordWarning, stacklevel=2)
            continue
        yield path, rec


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("fabench", "torch", "torchvision", "foolbox", "numpy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out
