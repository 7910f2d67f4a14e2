"""The small Python API of the cloud side.

>>> import server
>>> model = server.load(".cache/edge_gr/demo/rec-model")          # doctest: +SKIP
>>> server.search(model, ["Star Wars (1977)", "Alien (1979)"], k=3)  # doctest: +SKIP
[('Aliens (1986)', -1.93), ...]
>>> server.search(".cache/edge_gr/demo/retrieval-model", "god so loved the world")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Sequence

from edge_gr.errors import InputError
from edge_gr.search import Hit
from edge_gr.validate import check_beam, check_flag, check_k

from .generative import GenerativeModel

__all__ = ["load", "search"]


def load(path: str | os.PathLike, device: str = "cpu") -> GenerativeModel:
    """Load a checkpoint folder written by ``edge-gr train`` (format checked)."""
    return GenerativeModel.load(path, device=device)


def search(model: GenerativeModel | str | os.PathLike, query: str | Sequence[str], k: int = 10, *,
           beam: int | None = None, exclude_seen: bool = False) -> list[Hit]:
    """Top-``k`` :class:`~edge_gr.search.Hit` (unpacks as ``(id, score)``): ``query`` is text (retrieval)
    or a list of item ids (recommendation). The same answer as the device's ``Retriever.search``.

    An empty history gets the popularity ranking (scores ``nan``); a bad query, ``k`` or ``beam``
    raises :class:`edge_gr.errors.InputError` saying what to do (the checks of :mod:`edge_gr.validate`,
    the device runtime's too), before a checkpoint path is loaded.

    >>> search("no/such/ckpt", "god", k=0)
    Traceback (most recent call last):
    ...
    edge_gr.errors.InputError: k must be at least 1, got 0. To fix: pass an integer k from 1 to 512, e.g. k=10
    """
    k = check_k(k)
    check_beam(beam, k)
    check_flag(exclude_seen)
    if not isinstance(model, GenerativeModel):
        if not isinstance(model, (str, os.PathLike)):
            raise InputError(f"model must be a GenerativeModel or a checkpoint path, got {type(model).__name__}",
                             hint="pass server.load(path) or the path of an `edge-gr train` folder")
        model = load(model)
    return model.search(query, k, beam=beam, exclude_seen=exclude_seen)
