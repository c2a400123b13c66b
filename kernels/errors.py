"""The errors of priorscope.kernels, which imports nothing from priorscope.engine.

Messages follow the project's form ("Expected X. Got Y instead." plus the fix).
``priorscope.engine.errors.KernelError`` subclasses :class:`KernelError`, and the engine turns
the errors it gets from a kernel into its own (one paragraph on the command line, no traceback).
"""

from __future__ import annotations


class KernelError(Exception):
    """A kernel was given inputs it cannot process (type, shape, dtype)."""

    exit_code = 1


class KernelUsageError(KernelError):
    """A kernel parameter is malformed (sigmas, reduction names, flags): exit code 2."""

    exit_code = 2


__all__ = ["KernelError", "KernelUsageError"]
