"""The two errors a user meets when an environment cannot be made, with messages that say the fix."""
from __future__ import annotations

import importlib
from types import ModuleType


class UnknownEnvError(ValueError):
    """An env name whose suite or task does not exist; the message lists what does."""


class MissingDependencyError(ImportError):
    """An optional package a suite needs is not installed; the message names the pip extra."""


def import_optional(module: str, *, env: str, package: str, extra: str) -> ModuleType:
    """Import `module`, or fail in one line that says which extra brings it.

    Suites import their simulator lazily so that `actors.envs` works with only the core install.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(
            f"{env} needs {package}: pip install 'harmonyray[{extra}]'"
        ) from error
