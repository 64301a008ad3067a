"""The on-disk cache of trained backbones and extracted features.

Entries are tensors dictionaries saved with ``torch.save`` under a key that hashes *everything*
that determines them (task data fingerprint, seed, backbone parameters, a code version), so a
second recipe on the same backbone and data reuses them instead of retraining or re-extracting.
Writes are atomic (a temporary file in the same directory, then ``os.replace``) and entries are
read back with ``torch.load(..., weights_only=True)``: no code runs on load. Every entry has a
sidecar ``<entry>.sha256`` with the hash of its bytes; an entry that is unreadable, has no sidecar
or does not match it is treated as a miss and rewritten. Any failure to save is a warning: the
cache is best effort.

The cache directory is, in order: ``FitContext.cache_dir`` (``--cache-dir``), ``$FABENCH_CACHE``,
``${XDG_CACHE_HOME:-~/.cache}/fabench``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from fabench._lazy import lazy

if TYPE_CHECKING:  # pragma: no cover - heavy imports are lazy (see fabench._lazy)
    import torch
else:
    torch = lazy("torch")

log = logging.getLogger(__name__)

CACHE_ENV = "FABENCH_CACHE"


class CacheWarning(UserWarning):
    """The cache could not be written (or an entry was unreadable); the run goes on without it."""


_WARNED: set[str] = set()


def _warn_once(topic: str, message: str) -> None:
    """Warn with ``message`` unless ``topic`` (a cache directory) was already warned about in this
    process: an unwritable cache fails for every entry, and one line says so."""
    if topic in _WARNED:
        log.debug("%s", message)
        return
    _WARNED.add(topic)
    warnings.warn(message, CacheWarning, stacklevel=3)


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory (see the module docstring); not created here."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "fabench"


def hash_key(obj: Any) -> str:
    """SHA-256 of the canonical JSON of ``obj`` (keys sorted; tuples as lists)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


_FINGERPRINTS: dict[tuple[int, int, tuple[int, ...]], str] = {}


def tensor_fingerprint(t: torch.Tensor) -> str:
    """A content hash (BLAKE2b) of a tensor's values, dtype and shape (memoised per storage)."""
    t = t.detach().cpu().contiguous()
    memo = (t.data_ptr(), t._version, tuple(t.shape))
    if memo in _FINGERPRINTS:
        return _FINGERPRINTS[memo]
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.numpy().tobytes())
    out = h.hexdigest()
    if len(_FINGERPRINTS) > 64:
        _FINGERPRINTS.clear()
    _FINGERPRINTS[memo] = out
    return out


def entry_path(root: Path, kind: str, key: str, *, label: str = "") -> Path:
    """``root/kind/label-key.pt`` (``label`` makes the directory readable, ``key`` makes it unique)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    return root / kind / f"{safe + '-' if safe else ''}{key[:24]}.pt"


def digest_path(path: Path) -> Path:
    """The sidecar holding the SHA-256 of an entry's bytes (written after the entry)."""
    return path.with_name(path.name + ".sha256")


def load_entry(path: Path) -> dict[str, Any] | None:
    """The cached dictionary at ``path``, or ``None`` when absent, unreadable or not matching its
    content hash (a miss: the caller recomputes and rewrites it)."""
    if not path.is_file():
        return None
    try:
        blob = path.read_bytes()
        expected = digest_path(path).read_text(encoding="ascii").strip()
        if hashlib.sha256(blob).hexdigest() != expected:
            _warn_once(f"entry {path}", f"ignoring cache entry {path}: its content does not match its hash "
                                        "(it is recomputed)")
            return None
        obj = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or unverifiable entry is a miss; it is rewritten atomically
        _warn_once(f"entry {path}", f"ignoring unreadable cache entry {path} ({type(exc).__name__}; it is recomputed)")
        return None
    return obj if isinstance(obj, dict) else None


def _write_bytes_atomic(path: Path, blob: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_entry(path: Path, obj: Mapping[str, Any]) -> bool:
    """Write ``obj`` atomically with its content hash; returns False on *any* failure, with one
    :class:`CacheWarning` per cache directory (its root, two levels above the entry): the cache is
    best effort and never stops a run."""
    try:
        buf = io.BytesIO()
        torch.save(dict(obj), buf)
        blob = buf.getvalue()
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_bytes_atomic(path, blob)
        _write_bytes_atomic(digest_path(path), hashlib.sha256(blob).hexdigest().encode("ascii"))
    except Exception as exc:
        root = path.parent.parent
        _warn_once(f"root {root}", f"cannot write to the cache directory {str(root)!r} "
                                   f"({getattr(exc, 'strerror', None) or exc}); continuing without caching")
        return False
    return True
