"""The package's exceptions. Every message names the item (file, array index, text index) it is about.

Every stage's errors derive from WavLinkError, and the command lines catch only WavLinkError (and the
OS failing a file): a refusal is one line, anything else is a bug and keeps its traceback
(`wavlink-edge --debug` / WAVLINK_EDGE_DEBUG=1 shows a refusal's traceback too)."""
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


class UsageError(WavLinkError, ValueError):
    """An argument out of its range (a dim, a hop, a thread count, an option combination). ValueError too,
    so callers validating arguments can catch it as before."""


class BackendUnavailableError(WavLinkError):
    """The requested backend (e.g. TensorRT) is not installed on this host."""
