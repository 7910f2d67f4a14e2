"""edge-gr cloud side: data, semantic IDs, the generative model, training and evaluation.

Public API: :func:`load` and :func:`search` (see :mod:`server.api`); the command line
is ``edge-gr`` (:mod:`server.cli`).
"""

from .api import load, search

__all__ = ["load", "search"]
