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
