"""The edge-gr error hierarchy.

Every error says what went wrong *and what to do about it*; none of them should
surface as a stack trace from deep inside torch or numpy.

>>> try:
...     raise DataError("MovieLens-1M is not installed", hint="run `make install`")
... except EdgeGRError as e:
...     print(e)
MovieLens-1M is not installed. To fix: run `make install`
"""

from __future__ import annotations

__all__ = [
    "EdgeGRError",
    "DataError",
    "InputError",
    "FormatError",
    "BundleError",
    "SealedError",
    "MissingKeyError",
    "UpdateError",
    "TrustError",
    "BackendUnavailableError",
    "QuantizationError",
]


class EdgeGRError(Exception):
    """Base of all edge-gr errors. ``hint`` says what the caller should do."""

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(f"{message}. To fix: {hint}" if hint else message)


class DataError(EdgeGRError):
    """A data set is missing, malformed or inconsistent (names the file / line / command)."""


class InputError(EdgeGRError, ValueError):
    """A request (query, history, user) cannot be served as given."""


class FormatError(EdgeGRError):
    """A saved artifact (semantic IDs, checkpoint) has the wrong format or version."""


class BundleError(FormatError):
    """A device bundle is incomplete, corrupted or of an unsupported version."""


class SealedError(BundleError):
    """An encrypted bundle file cannot be opened: wrong key, or the ciphertext was altered (:mod:`edge_gr.sealed`)."""


class MissingKeyError(SealedError):
    """An encrypted bundle file needs a data key that no key provider was given for (or that the provider lacks)."""


class UpdateError(BundleError):
    """An update package cannot be installed (wrong base version, corrupted, inconsistent); the device keeps its model."""


class TrustError(UpdateError):
    """An update's signed metadata does not verify (forged, wrong key, expired) or its version is not allowed
    (downgrade, replay); the device keeps its model (:mod:`edge_gr.trust`)."""


class BackendUnavailableError(EdgeGRError, ImportError):
    """An optional runtime backend is not installed."""


class QuantizationError(EdgeGRError):
    """Compressing a model would break it: non-finite weights or activations, or values
    outside the target format's range (names the module and what to change)."""
