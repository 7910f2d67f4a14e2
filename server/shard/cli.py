"""``edge-gr shard-plan``: split a checkpoint's catalogue into semantic shards (what ``edge-gr serve --shards`` reads).

    edge-gr shard-plan --checkpoint ckpt/ --shards 4 --out plan.json               # whole trie subtrees, balanced by items
    edge-gr shard-plan --checkpoint ckpt/ --shards 4 --kind hash --out plan.json   # consistent hashing (baseline)

    edge-gr shard-rollout --etcd 127.0.0.1:2379 --shards 2,0,1,3 --checkpoint ckpt-v2/ --version v2 \\
        --check-url http://127.0.0.1:8000        # canary first; each shard must report v2 before the next moves

The plan's per-shard item counts are printed; ``--balance load`` / ``--hot`` need a measured load and are
reached from Python (:func:`server.shard.plan.semantic_plan`), as ``bench/shards.py`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

__all__ = ["add_parser", "cmd_shard_plan", "cmd_shard_rollout"]


def add_parser(sub) -> None:
    sp = sub.add_parser("shard-plan", help="split a checkpoint's catalogue into semantic shards (for `edge-gr serve --shards`)")
    sp.add_argument("--checkpoint", required=True, help="checkpoint folder written by `edge-gr train` / `edge-gr build`")
    sp.add_argument("--shards", type=int, required=True, help="number of shards")
    sp.add_argument("--kind", choices=["semantic", "hash"], default="semantic",
                    help="semantic: whole first-code subtrees per shard (routable); hash: consistent hashing (scatter only)")
    sp.add_argument("--out", required=True, help="plan JSON to write")
    sp.set_defaults(fn=cmd_shard_plan)
    sp = sub.add_parser("shard-rollout", help="switch shards to a new checkpoint in etcd, canary first (compare-and-swap per shard)")
    sp.add_argument("--etcd", required=True, metavar="HOST:PORT,...", help="etcd members")
    sp.add_argument("--shards", required=True, help="shard numbers in rollout order, the first is the canary, e.g. 2,0,1,3")
    sp.add_argument("--checkpoint", required=True, help="checkpoint folder the shards' replicas load (a path they can read)")
    sp.add_argument("--version", required=True, help="version string the replicas report")
    sp.add_argument("--check-url", default=None, help="the sharded service: after each shard, wait until it reports the version")
    sp.add_argument("--check-timeout", type=float, default=60.0, help="seconds a shard may take to reload (then the rollout rolls back)")
    sp.set_defaults(fn=cmd_shard_rollout)


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


def _reported(url: str, timeout: float):
    """A rollout check: the service at ``url`` reports ``shard`` at ``new["version"]`` within ``timeout`` s."""
    import time

    import httpx

    def check(shard: int, new: dict) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got = httpx.get(url.rstrip("/") + "/shards", timeout=10).json()["shards"].get(str(shard), {})
                if got.get("version") == new["version"]:
                    return True
            except (httpx.HTTPError, ValueError, KeyError):
                pass  # the service is reloading or restarting: ask again
            time.sleep(0.5)
        return False

    return check


def cmd_shard_rollout(args: argparse.Namespace) -> None:
    from edge_gr.errors import EdgeGRError, InputError

    from .meta import ShardMeta

    try:
        order = [int(x) for x in args.shards.split(",")]
    except ValueError:
        raise InputError(f"--shards {args.shards!r} is not a list of shard numbers", hint="e.g. --shards 2,0,1,3") from None
    ckpt = Path(args.checkpoint).resolve()
    if not (ckpt / "edge_gr_model.json").is_file():
        raise InputError(f"{ckpt} is not a checkpoint folder", hint="pass a folder written by `edge-gr train` / `edge-gr build`")
    new = {"checkpoint": str(ckpt), "version": args.version}
    check = _reported(args.check_url, args.check_timeout) if args.check_url else None
    with ShardMeta(args.etcd.split(",")) as meta:
        res = meta.rollout(order, new, check=check)
    print(json.dumps({"ok": res.ok, "switched": res.switched, "already": res.already, "stopped_at": res.stopped_at,
                      "reason": res.reason, "rolled_back": res.rolled_back, "retries": res.retries}))
    if not res.ok:
        raise EdgeGRError(f"rollout stopped at shard {res.stopped_at}: {res.reason}",
                          hint=f"rolled back {res.rolled_back}; fix the cause and re-run (shards already on {args.version} are skipped)")
