"""The project's own error types.

Every invalid input raises one of these with a message that says what to fix. The
HTTP layer maps them to status codes in one place (``serving/errors.py``).
"""

from __future__ import annotations


class AdbanditError(ValueError):
    """Base class: bad input or an impossible request. Nothing was changed."""


class InvalidConfig(AdbanditError):
    """A placement or policy configuration cannot be used as given."""


class InvalidOutcome(AdbanditError):
    """An outcome event is malformed or inconsistent."""


class InvalidDecisionRequest(AdbanditError):
    """A decide request cannot be served as given."""


class UnknownPlacement(AdbanditError):
    """The placement does not exist."""


class UnknownNetwork(AdbanditError):
    """The network is not configured for the placement."""


class InvalidState(AdbanditError):
    """A saved policy state is corrupt, of another schema version or of another policy."""


class StorageFailure(Exception):
    """The state directory cannot be written or synced (disk full, I/O error): nothing of
    the request was stored or acknowledged. Not bad input: the same request may succeed
    once the disk is writable again (the HTTP layer answers 507)."""
