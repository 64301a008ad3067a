"""Errors that the command line reports as one clear line (never a traceback)."""

from __future__ import annotations


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
