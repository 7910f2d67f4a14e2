"""Per-device training records for federated next-item learning (pure functions).

A *record* is one next-item prediction the device can learn from: the history up to a
position (left-padded item rows, 0 = pad) and the semantic ID of the item that came
next. One record = one rating, which is the unit the on-device DP-SGD protects
(:mod:`device_sim.fl.local`). A record never leaves the device: only adapter weights do.

>>> import numpy as np
>>> codes = np.array([[0, 1], [1, 0], [1, 1]])          # items rows 1..3 -> codes
>>> src, tgt = device_records([1, 2, 3], codes, max_len=2, start=1)
>>> src.tolist(), tgt.tolist()                           # predict item 2 from [1], 3 from [1, 2]
([[0, 1], [1, 2]], [[1, 0], [1, 1]])
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from edge_gr.errors import InputError

__all__ = ["device_records", "split_for_federation", "FederatedSplit"]


def device_records(rows: Sequence[int], codes: np.ndarray, max_len: int, start: int = 1,
                   max_records: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Records predicting ``rows[t]`` from ``rows[:t]`` for every ``t >= start``.

    ``rows`` are 1-based item rows (0 is padding), ``codes`` the (n_items, L) semantic
    codes of rows 1..n. Returns ``src`` (n, max_len) left-padded and ``tgt`` (n, L).
    ``max_records`` keeps the most recent ones.
    """
    if start < 1:
        raise InputError(f"start must be >= 1 (a record needs some history), got {start}")
    rows = [int(r) for r in rows]
    ts = list(range(max(start, 1), len(rows)))
    if max_records is not None:
        ts = ts[-max_records:] if max_records > 0 else []
    src = np.zeros((len(ts), max_len), dtype=np.int64)
    tgt = np.zeros((len(ts), codes.shape[1]), dtype=np.int64)
    for k, t in enumerate(ts):
        h = rows[max(0, t - max_len):t]
        src[k, max_len - len(h):] = h
        tgt[k] = codes[rows[t] - 1]
    return src, tgt


class FederatedSplit:
    """Who knows what: the cloud's pre-federation logs and each device's private part.

    For every user (leave-one-out ``train`` history, then a validation and a test item)
    the first ``cloud_fraction`` of the training history was logged to the cloud before
    the app went private: the base model is trained on that. The rest happened on the
    device and stays there; federated rounds learn from it. The test item is held out
    from everything and scored with the device's full history as context.
    """

    def __init__(self, train: Mapping[str, Sequence[str]], valid: Mapping[str, str], test: Mapping[str, str],
                 cloud_fraction: float = 0.5):
        if not 0.0 < cloud_fraction < 1.0:
            raise InputError(f"cloud_fraction must be in (0, 1), got {cloud_fraction}")
        self.cloud_fraction = cloud_fraction
        self.train = {u: list(h) for u, h in train.items()}
        self.valid, self.test = dict(valid), dict(test)
        self.cut = {u: max(2, int(round(len(h) * cloud_fraction))) for u, h in self.train.items()}

    def cloud_history(self, user: str) -> list[str]:
        """What the cloud logged for ``user`` (the first part of the training history)."""
        return self.train[user][: self.cut[user]]

    def device_start(self, user: str) -> int:
        """Index of the first on-device-only item in :meth:`device_history`."""
        return self.cut[user]

    def device_history(self, user: str) -> list[str]:
        """The whole training history (the device sees it all; it learns from items past the cut)."""
        return self.train[user]

    def test_history(self, user: str) -> list[str]:
        return self.train[user] + [self.valid[user]]


def split_for_federation(split, cloud_fraction: float = 0.5) -> FederatedSplit:
    """:class:`FederatedSplit` from a leave-one-out :class:`~server.data.base.RecSplit`."""
    return FederatedSplit(split.train, split.valid_target, split.test_target, cloud_fraction)
