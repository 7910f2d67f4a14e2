"""``edge-gr keys`` (the registry's signing keys, data keys) and ``edge-gr device`` (a device's model store, as an app drives it).

    edge-gr keys init    --dir KEYS [--expires-days 365]     # root + targets keys, root.json v1 (outside any git tree)
    edge-gr keys rotate  --dir KEYS --role targets|root       # new key, root.json vN+1 signed by the old root key
    edge-gr keys show    --dir KEYS                           # version, expiry, key ids (no private material)
    edge-gr keys data-key --out FILE [--key-id ID]            # AES-256 key for encrypted bundles (export --encrypt-key)
    edge-gr device install --store DIR PACKAGE [--trust root.json] [--key FILE]   # signed-only when --trust is given
    edge-gr device switch  --store DIR VERSION [--trust root.json --order ROLLBACK_PACKAGE]
    edge-gr device status  --store DIR
"""

from __future__ import annotations

import json

__all__ = ["add_parser"]


def cmd_init(args) -> None:
    from .keys import init_keys

    root = init_keys(args.dir, expires_days=args.expires_days)
    print(f"wrote {args.dir}: root.key (keep offline), targets.key, root.json v{root.version} (expires "
          f"{root.expires:%Y-%m-%d}); provision devices with {args.dir}/root.json")


def cmd_rotate(args) -> None:
    from .keys import rotate

    root = rotate(args.dir, args.role, expires_days=args.expires_days)
    print(f"rotated the {args.role} key: root.json v{root.version} (signed by the old root key); packages signed from now "
          f"on carry it, devices adopt it on their next install")


def cmd_show(args) -> None:
    from .keys import show

    print(json.dumps(show(args.dir), indent=1))


def cmd_data_key(args) -> None:
    from edge_gr.sealed import new_key

    k = new_key(args.out, key_id=args.key_id)
    print(f"wrote {args.out} (data key {k.key_id}, mode 0600): `edge-gr export --encrypt-key {args.out}`; devices load "
          f"with edge_gr.load(..., key_provider=FileKeyProvider(PATH)) or their platform keystore")


def _store(args):
    from edge_gr.update import BundleStore

    keys = None
    if getattr(args, "key", None):
        from edge_gr.sealed import FileKeyProvider

        keys = FileKeyProvider(*args.key)
    return BundleStore(args.store, trust=args.trust, key_provider=keys)


def cmd_install(args) -> None:
    store = _store(args)
    r = store.install(args.package)
    what = "switched to a version already on the device" if r.switched_only else \
        f"{r.shipped} files shipped, {r.reused} reused, {r.rebuilt} rebuilt"
    print(f"{args.store}: {r.from_version or 'nothing'} -> {r.to_version} ({r.bytes:,} bytes, {what}, "
          f"{'signature verified' if store.trusted else 'UNSIGNED: no --trust'})")


def cmd_switch(args) -> None:
    store = _store(args)
    before = store.current()
    store.switch(args.version, order=args.order)
    print(f"{args.store}: {before} -> {store.current()}")


def cmd_status(args) -> None:
    from edge_gr.update import BundleStore

    store = BundleStore(args.store)
    got = store.resolve()
    print(json.dumps({"current": store.current(), "serving": got.version, "fell_back": got.fell_back, "versions": store.versions()}))


def add_parser(sub) -> None:
    """Register ``edge-gr keys ...`` and ``edge-gr device ...``."""
    kp = sub.add_parser("keys", help="the registry's signing keys: init, rotate, show")
    ks = kp.add_subparsers(dest="keys_cmd", required=True)
    p = ks.add_parser("init", help="create root + targets keys and root.json v1 in a new folder (never inside a git tree)")
    p.add_argument("--dir", required=True)
    p.add_argument("--expires-days", type=int, default=365)
    p.set_defaults(fn=cmd_init)
    p = ks.add_parser("rotate", help="replace a role's key; writes root.json vN+1 signed by the old root key")
    p.add_argument("--dir", required=True)
    p.add_argument("--role", required=True, choices=["root", "targets"])
    p.add_argument("--expires-days", type=int, default=365)
    p.set_defaults(fn=cmd_rotate)
    p = ks.add_parser("show", help="root.json's version, expiry and key ids")
    p.add_argument("--dir", required=True)
    p.set_defaults(fn=cmd_show)
    p = ks.add_parser("data-key", help="a new AES-256 data key file for encrypted bundles (0600, never overwritten)")
    p.add_argument("--out", required=True)
    p.add_argument("--key-id", default=None, help="name of the key (default: derived from it)")
    p.set_defaults(fn=cmd_data_key)

    dp = sub.add_parser("device", help="a device's model store: install an update package, switch, status")
    ds = dp.add_subparsers(dest="device_cmd", required=True)
    p = ds.add_parser("install", help="install an update package (`edge-gr registry package`) into a store")
    p.add_argument("package")
    p.add_argument("--store", required=True)
    p.add_argument("--trust", default=None, help="the provisioned root.json: only signed packages are installed")
    p.add_argument("--key", action="append", default=None, metavar="FILE", help="data key of an encrypted bundle (repeatable)")
    p.set_defaults(fn=cmd_install)
    p = ds.add_parser("switch", help="point the store at a version it holds (older ones need --order with --trust)")
    p.add_argument("version")
    p.add_argument("--store", required=True)
    p.add_argument("--trust", default=None)
    p.add_argument("--order", default=None, help="signed rollback package (or its release.json)")
    p.set_defaults(fn=cmd_switch)
    p = ds.add_parser("status", help="which version is current and which are kept")
    p.add_argument("--store", required=True)
    p.set_defaults(fn=cmd_status)
