"""Errors of the federated layer (``device_sim.fl``).

>>> from edge_gr.errors import EdgeGRError
>>> issubclass(FederationError, EdgeGRError)
True
>>> print(FederationError("SecAgg+ halted in round 1", hint="lower reconstruction_threshold"))
SecAgg+ halted in round 1. To fix: lower reconstruction_threshold
"""

from __future__ import annotations

from edge_gr.errors import EdgeGRError

__all__ = ["FederationError"]


class FederationError(EdgeGRError):
    """A federated round or deployment could not complete (names the stage, the
    process or the range that failed, and what to change)."""
