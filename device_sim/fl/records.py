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

from typing import AbstractSet as Set, Mapping, Sequence

import numpy as np

from edge_gr.errors import InputError

__all__ = ["device_records", "device_sequence", "split_for_federation", "FederatedSplit"]


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


def device_sequence(rows: Sequence[int], max_len: int) -> np.ndarray:
    """The device's most recent ``max_len + 1`` item rows as one left-padded sequence (``(1, max_len + 1)``).

    The ``sequence`` objective trains on it as the cloud does: every position predicts the next item, so one
    forward covers every record of the window (:meth:`GenerativeRetriever.rec_loss`).

    >>> device_sequence([4, 5, 6], max_len=4).tolist()
    [[0, 0, 4, 5, 6]]
    """
    rows = [int(r) for r in rows][-(max_len + 1):]
    if len(rows) < 2:
        raise InputError(f"a training sequence needs >= 2 items, got {len(rows)}", hint="wait until the history has >= 2 items")
    seq = np.zeros((1, max_len + 1), dtype=np.int64)
    seq[0, max_len + 1 - len(rows):] = rows
    return seq


class FederatedSplit:
    """Who knows what: the cloud's pre-federation logs and each device's private part.

    Every user has a leave-one-out ``train`` history, then a validation and a test item. Two scenarios:

    * ``"history"`` (``cloud_users=None``): the first ``cloud_fraction`` of every training history was
      logged to the cloud before the app went private; the base model is trained on that, the rest
      happened on the device and stays there.
    * ``"users"`` (``cloud_users`` = the opted-in users): the cloud has the whole training histories of
      those users and nothing of anyone else; every other user is a device whose history never left it.
      Federated rounds and evaluation use the device users only (:attr:`device_users`).

    The test item is held out from everything and scored with the device's full history as context.

    >>> s = FederatedSplit({"a": list("wxyz"), "b": list("wxyz")}, {"a": "q", "b": "q"}, {"a": "r", "b": "r"}, cloud_users={"a"})
    >>> s.cloud_history("a"), s.cloud_history("b"), s.device_users, s.device_start("b")
    (['w', 'x', 'y', 'z'], [], ['b'], 1)
    """

    def __init__(self, train: Mapping[str, Sequence[str]], valid: Mapping[str, str], test: Mapping[str, str],
                 cloud_fraction: float = 0.5, cloud_users: Set[str] | None = None):
        if not 0.0 < cloud_fraction < 1.0:
            raise InputError(f"cloud_fraction must be in (0, 1), got {cloud_fraction}")
        self.cloud_fraction = cloud_fraction
        self.train = {u: list(h) for u, h in train.items()}
        self.valid, self.test = dict(valid), dict(test)
        self.cloud_users = None if cloud_users is None else frozenset(cloud_users) & set(self.train)
        if self.cloud_users is None:
            self.scenario = "history"
            self.cut = {u: max(2, int(round(len(h) * cloud_fraction))) for u, h in self.train.items()}
        else:
            self.scenario = "users"
            self.cut = {u: (len(h) if u in self.cloud_users else 1) for u, h in self.train.items()}
        self.device_users = sorted(u for u in self.train if self.cloud_users is None or u not in self.cloud_users)

    def cloud_history(self, user: str) -> list[str]:
        """What the cloud logged for ``user`` (the first part of the training history; nothing of a device user)."""
        if self.cloud_users is not None and user not in self.cloud_users:
            return []
        return self.train[user][: self.cut[user]]

    def device_start(self, user: str) -> int:
        """Index of the first on-device-only item in :meth:`device_history`."""
        return self.cut[user]

    def device_history(self, user: str) -> list[str]:
        """The whole training history (the device sees it all; it learns from items past the cut)."""
        return self.train[user]

    def test_history(self, user: str) -> list[str]:
        return self.train[user] + [self.valid[user]]


def split_for_federation(split, cloud_fraction: float = 0.5, *, scenario: str = "history", cloud_users: float = 0.25,
                         seed: int = 0) -> FederatedSplit:
    """:class:`FederatedSplit` from a leave-one-out :class:`~server.data.base.RecSplit`.

    ``scenario="users"``: a seeded random ``cloud_users`` share of the users opted in (full histories to the cloud).
    """
    if scenario == "history":
        return FederatedSplit(split.train, split.valid_target, split.test_target, cloud_fraction)
    if scenario != "users":
        raise InputError(f"unknown federated scenario {scenario!r}", hint="use 'history' or 'users'")
    if not 0.0 < cloud_users < 1.0:
        raise InputError(f"cloud_users must be a share in (0, 1), got {cloud_users}")
    users = sorted(split.train)
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(users, max(1, int(round(cloud_users * len(users)))), replace=False).tolist())
    return FederatedSplit(split.train, split.valid_target, split.test_target, cloud_fraction, cloud_users=chosen)
