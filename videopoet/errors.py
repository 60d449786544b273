"""User-facing errors.

Anything a user can cause (bad media, bad config, missing weights, unknown task, bad shapes or
ranges) raises a subclass of `VideoPoetError` with a message that names the file or field. The
command line prints these as one line and exits with status 2; everything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

from pathlib import Path


class VideoPoetError(Exception):
    """Base class for errors caused by input, configuration or environment (not bugs)."""


class ConfigError(VideoPoetError, ValueError):
    """A config file or field is missing, unknown or has a bad value."""


class MediaError(VideoPoetError):
    """A media file cannot be read or written. The message always names the file."""

    def __init__(self, path: str | Path | None, message: str):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class InputError(VideoPoetError, ValueError):
    """A tensor or value given to a model is of the wrong shape, range or dtype (names the field)."""


class NotAvailableError(VideoPoetError):
    """A feature is not available here (not built yet, needs weights the user did not give, needs a GPU)."""
