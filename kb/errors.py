"""Domain errors. The edges (CLI, HTTP) turn them into exit codes and status codes."""

from __future__ import annotations


class KBError(Exception):
    """Base of every error kb raises on purpose; the message names the problem and the fix."""


class InvalidInput(KBError):
    """The caller sent something malformed or out of range (HTTP 422/400)."""


class NotFound(KBError):
    """A named thing (collection, document, model, job) does not exist (HTTP 404)."""


class CollectionNotFound(NotFound):
    pass


class DocumentNotFound(NotFound):
    pass


class ModelNotFound(NotFound):
    pass


class JobNotFound(NotFound):
    pass


class Conflict(KBError):
    """The request clashes with the current state (HTTP 409)."""


class EmbeddingMismatch(Conflict):
    """A collection was built with one embedding model and is being written with another."""


class CollectionBusy(Conflict):
    """Another writer holds the collection's write lock."""


class Unavailable(KBError):
    """A feature cannot run as configured, e.g. no fine-tuned model registered (HTTP 409/424)."""


class ModeUnavailable(Unavailable):
    pass


class ExtraMissing(Unavailable):
    """An optional extra (`pip install -e ".[NAME]"`) that a feature needs is not installed."""


class PermissionDenied(KBError):
    """The caller's key does not allow this action (HTTP 403)."""


class Unauthenticated(KBError):
    """No or unknown API key (HTTP 401)."""


class LoaderError(KBError):
    """A file could not be turned into a document; the ingest records it and goes on."""


class UnsupportedFile(LoaderError):
    """The file type is unknown or binary."""


class BackendError(KBError):
    """A model backend or remote endpoint failed (HTTP 502)."""
