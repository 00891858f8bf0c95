"""Exceptions of the runtime. Every message names the item (file, array index, text index) it is about."""
from __future__ import annotations


class WavLinkError(RuntimeError):
    """Base class: anything the runtime refuses, with a message meant for the user."""


class ModelFilesError(WavLinkError):
    """The export directory is missing, from another format/version, incomplete or tampered with."""


class InputError(WavLinkError, ValueError):
    """One input item cannot be embedded. ValueError too, so callers validating arguments can catch it."""


class AudioInputError(InputError):
    """An audio item is unreadable, empty, non-finite or malformed."""


class TextInputError(InputError):
    """A text item is not a string or not valid UTF-8."""


class BackendUnavailableError(WavLinkError):
    """The requested backend (e.g. TensorRT) is not installed on this host."""
