"""``edge-gr registry``: list, diff, publish, rollback, gc, materialize and package model versions.

    edge-gr registry list        --registry REG [--json]
    edge-gr registry publish     --registry REG --checkpoint CKPT [--full] [--parent V] [--activate] [--metrics '{"ndcg@10": 0.13}'] [--note TEXT]
    edge-gr registry diff        --registry REG A B
    edge-gr registry rollback    --registry REG [VERSION]          # default: the version current pointed at before
    edge-gr registry gc          --registry REG [--keep 3] [--dry-run]
    edge-gr registry materialize --registry REG VERSION --out CKPT [--force]  # rebuilt, hash-checked checkpoint folder (then `edge-gr export`)
    edge-gr registry package     --registry REG --to V [--from V] --out DIR [--variants onnxruntime:fp32,onnxruntime:int8] [--force]
                                 [--sign KEYS [--expires-days 30] [--rollback]]
                                 # the bundle update a device holding the bundle of --from downloads (edge_gr.update.BundleStore.install)

``--out`` of materialize / package is written beside itself and swapped in; an existing folder is replaced only
if it is a previous output of the same command (nothing added), else refused unless ``--force``.

``edge-gr rollout simulate`` lives in ``device_sim.rollout_sim`` (``add_parser``): the
simulation sits on top of ``server`` and must not be imported by it.
"""

from __future__ import annotations

import json

__all__ = ["add_parser"]


def _reg(args, create: bool = False):
    from .registry import Registry

    return Registry(args.registry, create=create)


def cmd_list(args) -> None:
    rows = _reg(args).list()
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"registry {args.registry}")
    for c in ("", "version", "kind", "parent", "KB", "changed", "created", "metrics", "status"):
        t.add_column(c)
    for r in rows:
        t.add_row("*" if r["current"] else "", r["version"], r["kind"], r["parent"] or "", f"{r['bytes'] / 1e3:.1f}", str(r["changed"]),
                  r["created"], json.dumps(r["metrics"]), r["status"] if r["status"] == "ok" else f"[red]{r['status']}[/]")
    Console().print(t)


def cmd_publish(args) -> None:
    from edge_gr.errors import InputError

    try:
        metrics = json.loads(args.metrics) if args.metrics else {}
    except json.JSONDecodeError as e:
        raise InputError(f"--metrics is not JSON ({e.msg} at character {e.pos})",
                         hint="give a JSON object, e.g. --metrics '{\"ndcg@10\": 0.13}'") from None
    if not isinstance(metrics, dict):
        raise InputError(f"--metrics must be a JSON object, got {type(metrics).__name__}", hint="e.g. --metrics '{\"ndcg@10\": 0.13}'")
    m = _reg(args, create=True).publish_checkpoint(args.checkpoint, full=args.full, parent=args.parent, metrics=metrics,
                                                   note=args.note or "", activate=args.activate)
    print(f"published {m.version} ({m.kind}{', parent ' + m.parent if m.parent else ''}): {m.size / 1e3:.1f} KB, "
          f"{len(m.ops) if m.kind == 'delta' else len(m.tensors)} tensors" + (" - now current" if args.activate else ""))


def cmd_diff(args) -> None:
    d = _reg(args).diff(args.a, args.b)
    print(json.dumps(d, indent=1))


def cmd_rollback(args) -> None:
    reg = _reg(args)
    before = reg.current()
    to = reg.rollback(args.version)
    print(f"current: {before} -> {to}")


def cmd_gc(args) -> None:
    gone = _reg(args).gc(keep=args.keep, dry_run=args.dry_run)
    print(("would remove: " if args.dry_run else "removed: ") + (", ".join(gone) or "nothing"))


def cmd_materialize(args) -> None:
    out = _reg(args).materialize(args.version, args.out, force=args.force)
    print(f"wrote {out} (rebuilt from {' -> '.join(_reg(args).chain(args.version))}, every tensor hash checked)")


def cmd_package(args) -> None:
    from .registry import DEFAULT_BUNDLE_VARIANTS

    variants = DEFAULT_BUNDLE_VARIANTS
    if args.variants:
        from .export.bundle import parse_variants

        variants = tuple(parse_variants(args.variants))
    signer = None
    if args.sign:
        from .keys import Signer

        signer = Signer(args.sign, expires_days=args.expires_days)
    out, size = _reg(args).bundle_package(args.from_version, args.to, args.out, variants=variants, force=args.force,
                                          signer=signer, rollback=args.rollback)
    doc = json.loads((out / "update.json").read_text())
    signed = f", signed (root v{signer.root.version}, expires in {args.expires_days:g} days)" if signer else ", UNSIGNED"
    print(f"wrote {out}: {size:,} bytes for a device at {args.from_version or 'nothing'} -> {args.to} "
          f"({len(doc['files'])} files shipped, {len(doc['rebuild'])} rebuilt on the device, {len(doc['steps'])} delta steps"
          f"{', a rollback order' if args.rollback else ''}{signed})")


def add_parser(sub) -> None:
    """Register ``edge-gr registry ...`` on an argparse sub-parser collection."""
    rp = sub.add_parser("registry", help="model versions: list, publish, diff, rollback, gc, materialize, package")
    rs = rp.add_subparsers(dest="registry_cmd", required=True)

    def cmd(name, fn, help):
        p = rs.add_parser(name, help=help)
        p.add_argument("--registry", required=True, help="registry folder")
        p.set_defaults(fn=fn)
        return p

    p = cmd("list", cmd_list, "versions, sizes, metrics, which is current, and any damage")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = cmd("publish", cmd_publish, "publish a checkpoint folder as a new version (a delta of changed tensors unless --full)")
    p.add_argument("--checkpoint", required=True, help="folder written by `edge-gr train`")
    p.add_argument("--full", action="store_true", help="store all weights (a new base) instead of a delta")
    p.add_argument("--parent", default=None, help="version the delta applies to (default: current)")
    p.add_argument("--activate", action="store_true", help="point current at it right away (else use rollout / rollback)")
    p.add_argument("--metrics", default=None, help="JSON object of metrics to store with the version")
    p.add_argument("--note", default=None)
    p = cmd("diff", cmd_diff, "tensors, files and metrics that differ between two versions")
    p.add_argument("a")
    p.add_argument("b")
    p = cmd("rollback", cmd_rollback, "point current back at VERSION (default: the previous current)")
    p.add_argument("version", nargs="?", default=None)
    p = cmd("gc", cmd_gc, "delete versions nothing needs (keeps the newest N, current, rollback targets and their bases)")
    p.add_argument("--keep", type=int, default=3)
    p.add_argument("--dry-run", action="store_true")
    p = cmd("materialize", cmd_materialize, "write a version's rebuilt checkpoint folder (base + deltas, hash-checked)")
    p.add_argument("version")
    p.add_argument("--out", required=True, help="checkpoint folder to write (an existing one only if a previous materialize, "
                                                "unless --force)")
    p.add_argument("--force", action="store_true", help="replace --out even if it holds files edge-gr did not write")
    p = cmd("package", cmd_package, "write the bundle update a device at --from needs to reach --to (a tensor delta + changed "
                                    "files; without --from the whole bundle)")
    p.add_argument("--to", required=True)
    p.add_argument("--from", dest="from_version", default=None)
    p.add_argument("--out", required=True, help="package folder to write (an existing one only if a previous package, unless --force)")
    p.add_argument("--force", action="store_true", help="replace --out even if it holds files edge-gr did not write")
    p.add_argument("--variants", default=None, help="bundle variants BACKEND:PRECISION,... (default: onnxruntime:fp32)")
    p.add_argument("--sign", default=None, metavar="KEYS", help="key folder of `edge-gr keys init`: the package carries a signed "
                                                                 "release.json, which devices with a trust anchor require")
    p.add_argument("--expires-days", type=float, default=30.0, help="how long the signed release stays valid (default 30)")
    p.add_argument("--rollback", action="store_true", help="a signed rollback order: --from the devices' version --to an older one")
