"""The error tree of priorscope.

Every error a user can cause derives from :class:`PriorscopeError` and carries a message of the
form "Expected X. Got Y instead." followed by what to do. The CLI prints these as one paragraph
without a traceback (``--debug`` shows it) and exits with code 1, or 2 for :class:`UsageError`.
"""

from __future__ import annotations

import priorscope.kernels.errors as _kernel_errors


class PriorscopeError(Exception):
    """Base of every error priorscope raises on purpose."""

    exit_code = 1


class UsageError(PriorscopeError):
    """A command-line argument or API parameter is malformed (exit code 2)."""

    exit_code = 2


class DataError(PriorscopeError):
    """A benchmark file or one of its rows cannot be turned into an Example."""


class ImageError(DataError):
    """An image cannot be decoded, is too large, or its path escapes the image folder."""


class UnknownNameError(UsageError):
    """A registry was asked for a name it does not know."""


class ModelError(PriorscopeError):
    """A model cannot be loaded or lacks a part priorscope needs (layers, norm, head)."""


class KernelError(PriorscopeError, _kernel_errors.KernelError):
    """A kernel was given inputs it cannot process."""


class StoreError(PriorscopeError):
    """A store is missing, corrupt, incomplete, or was written with another configuration."""


class ConfigMismatchError(StoreError):
    """Resuming into a store whose recorded configuration differs from the requested one."""


class CaptureInterrupted(PriorscopeError):
    """A capture stopped by Ctrl-C (exit code 130, as a shell reports SIGINT); committed
    shards are kept and the same command resumes it."""

    exit_code = 130


def did_you_mean(name: str, known: list[str] | tuple[str, ...], what: str) -> UnknownNameError:
    """Return an UnknownNameError naming the closest known names and listing all of them."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownNameError(
        f"Unknown {what} {name!r}.{hint} Expected one of: {', '.join(sorted(known))}."
    )
