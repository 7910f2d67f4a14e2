"""``edge-gr shard-plan``: split a checkpoint's catalogue into semantic shards (what ``edge-gr serve --shards`` reads).

    edge-gr shard-plan --checkpoint ckpt/ --shards 4 --out plan.json               # whole trie subtrees, balanced by items
    edge-gr shard-plan --checkpoint ckpt/ --shards 4 --kind hash --out plan.json   # consistent hashing (baseline)

The plan's per-shard item counts are printed; ``--balance load`` / ``--hot`` need a measured load and are
reached from Python (:func:`server.shard.plan.semantic_plan`), as ``bench/shards.py`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

__all__ = ["add_parser", "cmd_shard_plan"]


def add_parser(sub) -> None:
    sp = sub.add_parser("shard-plan", help="split a checkpoint's catalogue into semantic shards (for `edge-gr serve --shards`)")
    sp.add_argument("--checkpoint", required=True, help="checkpoint folder written by `edge-gr train` / `edge-gr build`")
    sp.add_argument("--shards", type=int, required=True, help="number of shards")
    sp.add_argument("--kind", choices=["semantic", "hash"], default="semantic",
                    help="semantic: whole first-code subtrees per shard (routable); hash: consistent hashing (scatter only)")
    sp.add_argument("--out", required=True, help="plan JSON to write")
    sp.set_defaults(fn=cmd_shard_plan)


def cmd_shard_plan(args: argparse.Namespace) -> None:
    from server.api import load

    from .plan import hash_plan, semantic_plan

    gm = load(args.checkpoint)
    plan = semantic_plan(gm.ids, args.shards) if args.kind == "semantic" else hash_plan(gm.ids, args.shards)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name, suffix=".tmp")  # never a half-written plan
    with os.fdopen(fd, "w") as f:
        json.dump(plan.to_dict(), f)
    os.replace(tmp, out)
    st = plan.stats()
    print(f"wrote {out}: {st['shards']} {plan.kind} shards, items per shard max {st['items_max']} / mean {st['items_mean']:.1f}")
