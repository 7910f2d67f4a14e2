"""Adversarial clients for robustness evaluation, as a Flower client mod (the way Flower layers behaviour
onto a ClientApp): the chosen partitions corrupt their honest reply before it leaves the device.

* ``nan``: every adapter value NaN.
* ``scale``: the update (reply - the arrays received) multiplied by ``factor`` (default 1e6).
* ``examples``: ``num-examples`` claimed as ``factor`` (default 1e9).

``edge-gr fl run --attack nan:1`` makes partition 0 an attacker (``KIND:N`` = the first N partitions);
the run log then shows what the server rejected (``rounds[i].rejected``) and whether the model stayed finite.

>>> parse_attack("scale:2")
{'kind': 'scale', 'partitions': [0, 1], 'factor': 1000000.0}
"""

from __future__ import annotations

import numpy as np

from .errors import FederationError

__all__ = ["KINDS", "parse_attack", "attack_mod"]

KINDS = {"nan": None, "scale": 1e6, "examples": 1e9}


def parse_attack(s: str) -> dict:
    kind, _, n = s.partition(":")
    if kind not in KINDS:
        raise FederationError(f"unknown attack {kind!r}", hint=f"use one of {', '.join(KINDS)}, e.g. --attack nan:1")
    try:
        count = int(n or 1)
    except ValueError:
        raise FederationError(f"--attack {s!r}: the count after ':' is not an integer", hint="e.g. --attack scale:2") from None
    return {"kind": kind, "partitions": list(range(count)), "factor": KINDS[kind]}


def attack_mod(attack: dict):
    """A Flower mod corrupting the train replies of ``attack["partitions"]``."""
    kind, victims, factor = attack["kind"], set(int(p) for p in attack["partitions"]), attack.get("factor")

    def mod(msg, context, call_next):
        from flwr.app import Array, ArrayRecord

        reply = call_next(msg, context)
        if int(context.node_config.get("partition-id", -1)) not in victims or reply.has_error():
            return reply
        c = reply.content
        if "arrays" not in c.array_records:
            return reply  # declined / dropped: nothing to corrupt
        if kind == "examples":
            c["metrics"]["num-examples"] = int(factor)
            return reply
        got = {k: v.numpy() for k, v in c["arrays"].items()}
        sent = {k: v.numpy() for k, v in msg.content["arrays"].items()}
        if kind == "nan":
            bad = {k: np.full_like(v, np.nan) for k, v in got.items()}
        else:
            bad = {k: (sent[k] + (v - sent[k]) * factor).astype(v.dtype) for k, v in got.items()}
        c["arrays"] = ArrayRecord({k: Array(np.ascontiguousarray(v, dtype=np.float32)) for k, v in bad.items()})
        return reply

    return mod
