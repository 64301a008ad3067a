"""Errors that the command line reports as one clear line (never a traceback)."""

from __future__ import annotations

from pathlib import Path


class FabenchError(Exception):
    """Base class of every error fabench raises for bad input or missing data."""


class UnknownNameError(FabenchError, KeyError):
    """An unknown task, recipe, attack or parameter name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(FabenchError, ValueError):
    """A malformed option or parameter value."""


class DataError(FabenchError):
    """Missing, truncated or corrupt data, with what to do about it."""


class PluginConflictError(FabenchError):
    """Two providers registered the same name and none was chosen explicitly."""


class PluginError(FabenchError):
    """A plugin (or its result) failed: the message names the plugin and its distribution."""


class InvalidOutcomeError(PluginError):
    """An attack returned an :class:`~fabench.types.AttackOutcome` that contradicts itself or the model."""


class RecordWriteError(FabenchError):
    """A finished record could not be written where asked; ``fallback`` is where it was kept
    (``None`` if nowhere: the caller should print ``record``)."""

    def __init__(self, message: str, *, record: object = None, fallback: object = None) -> None:
        super().__init__(message)
        self.record = record
        self.fallback = fallback


def user_path(text: str, what: str, *, base: Path | None = None) -> Path:
    """The path that an option or a file names, ``~`` expanded (and, given ``base``, taken relative to
    it and made absolute), or one :class:`ConfigError` line when the system cannot use it as a path: a
    NUL character, an unknown ``~user``, a name too long. Checked here, not later mid-run. ``what``
    names the option (``--out``) or the entry (``sweep.toml: out``)."""
    try:
        path = Path(text).expanduser()
        if base is not None:
            path = (base / path).resolve()
        path.exists()  # raises for a name the system refuses (too long); a missing one is fine
    except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: "Could not determine home directory"
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{what} {text!r} is not a usable path: {reason}") from None
    return path
