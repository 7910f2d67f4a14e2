"""edge-gr device runtime: semantic-ID codec, prefix trie and trie-constrained decoding.

Imports neither ``server`` nor ``device_sim``, and nothing here needs torch.

>>> import numpy as np, edge_gr
>>> ids = edge_gr.SemanticIds(["a", "b"], np.array([[0, 0], [0, 1]]), (1, 2))
>>> items, scores = edge_gr.beam_search(lambda p: np.zeros(p.shape[:2] + (ids.levels[p.shape[2]],)), ids.trie(), n=1, beam=2, k=2)
>>> sorted(items[0].tolist())
[0, 1]
"""

from .decode import beam_search
from .errors import (BackendUnavailableError, BundleError, DataError, EdgeGRError, FormatError, InputError, MissingKeyError, QuantizationError,
                     SealedError, TrustError, UpdateError)
from .ids import SemanticIds, Trie
from .runtime import Retriever, load
from .search import Hit, Searcher

__all__ = ["load", "Retriever", "Hit", "Searcher", "SemanticIds", "Trie", "beam_search", "EdgeGRError", "DataError", "InputError", "FormatError",
           "BundleError", "BackendUnavailableError", "QuantizationError", "UpdateError", "TrustError", "SealedError", "MissingKeyError"]
__version__ = "0.1.0"
