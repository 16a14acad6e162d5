"""Errors the core raises; transports map them to status codes (api/errors.py)."""

from __future__ import annotations


class RewardServeError(Exception):
    """Base class. ``message`` is safe to show a client: no paths, no tracebacks."""


class InputError(RewardServeError, ValueError):
    """The request is invalid (bad field, too long without truncate). HTTP 422 / INVALID_ARGUMENT."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        self.index = index
        super().__init__(message if index is None else f"inputs[{index}]: {message}")


class ModelNotFound(RewardServeError):
    """The request names a model this server does not serve. HTTP 404 / NOT_FOUND."""


class NotReady(RewardServeError):
    """Models still loading, or the server is draining. HTTP 503 / UNAVAILABLE."""


class ConfigError(RewardServeError, ValueError):
    """The served-model declaration (--model / --config YAML) is invalid: unknown or duplicate names,
    a cycle, an ensemble member that is not a model, a bad normalization file. Raised at start-up."""
