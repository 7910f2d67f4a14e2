"""``edge-gr export``: turn trained checkpoints into a device bundle.

    edge-gr export --checkpoint ckpt/ --out bundle/ [--variants onnxruntime:fp32,onnxruntime:int8@student]
                   [--source student=variants/int8] [--archive] [--force] [--encrypt-key data.key]

``--out`` is written beside itself and swapped in. An existing folder is replaced only if it is a previous
``edge-gr export`` (nothing added to it); anything else is refused unless ``--force`` is given.

A checkpoint written by ``edge-gr compress`` carries its recipe (``recipe.json``): exported alone,
its default variants are every backend that has the recipe's precision.

``--encrypt-key FILE`` (a data key from :func:`edge_gr.sealed.new_key`) encrypts every variant's model
files with AES-256-GCM (:mod:`edge_gr.sealed`); the device loads the bundle with ``key_provider=``.
"""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def _variants(s: str):
    from .bundle import parse_variants

    try:
        return parse_variants(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _source(s: str) -> tuple[str, str]:
    name, sep, path = s.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"bad --source {s!r}: use NAME=CHECKPOINT, e.g. student=variants/int8")
    return name, path


def cmd_export(args) -> None:
    from edge_gr.bundle import load_manifest

    from ..compress.recipe import BACKEND_RECIPES
    from ..generative import GenerativeModel
    from .bundle import DEFAULT_VARIANTS, VariantSpec, export_bundle

    from .bundle import check_bundle_out

    check_bundle_out(args.out, "export", force=args.force, archive=args.archive)  # before loading any checkpoint
    key = None
    if args.encrypt_key:
        from edge_gr.sealed import load_key

        key = load_key(args.encrypt_key)  # a missing or damaged key file fails before any checkpoint is loaded
    gm = GenerativeModel.load(args.checkpoint)
    sources = {name: GenerativeModel.load(path) for name, path in args.source or []}
    variants = args.variants
    if variants is None:
        variants = DEFAULT_VARIANTS if gm.recipe is None else [VariantSpec(b, gm.recipe.precision) for b, r in BACKEND_RECIPES.items()
                                                               if gm.recipe.precision in r]
    out = export_bundle(gm, args.out, variants, sources=sources, model_version=args.model_version, archive=args.archive,
                        force=args.force, encrypt=key)
    m = load_manifest(out)
    for v in m.variants:
        print(f"{v.name:<24} {v.backend:<12} {v.precision:<5} {v.size / 1e6:8.2f} MB  from {v.source.get('name')}")
    print(f"wrote {out}" + (f" and {out}.tar" if args.archive else "") + (f"; model files encrypted with data key {key.key_id}" if key else ""))


def add_parser(sub) -> None:
    """Register the ``export`` subcommand on an argparse sub-parser collection."""
    sp = sub.add_parser("export", help="export checkpoints as a device bundle (ExecuTorch / ONNX Runtime / LiteRT / torch variants)")
    sp.add_argument("--checkpoint", required=True, help="checkpoint folder written by `edge-gr train` (the main model)")
    sp.add_argument("--out", required=True, help="bundle folder to write (replaced atomically; an existing folder only if it is "
                                                 "a previous export, unless --force)")
    sp.add_argument("--force", action="store_true", help="replace --out (and OUT.tar) even if it holds files edge-gr did not write")
    sp.add_argument("--variants", type=_variants, default=None,
                    help="comma-separated BACKEND:PRECISION[@SOURCE] (default: executorch fp32/int8/int4, onnxruntime fp32/int8, "
                         "litert fp32/int8, torch fp32; for a checkpoint with a recipe: every backend at its precision)")
    sp.add_argument("--source", type=_source, action="append", metavar="NAME=CHECKPOINT",
                    help="another checkpoint variants may come from (e.g. student=variants/int8), repeatable")
    sp.add_argument("--model-version", default=None, help="version string stored in the manifest (default: export time)")
    sp.add_argument("--archive", action="store_true", help="also write OUT.tar, the single-file bundle")
    sp.add_argument("--encrypt-key", default=None, metavar="FILE",
                    help="encrypt every variant's model files (AES-256-GCM) with this data key file (edge_gr.sealed.new_key); "
                         "IDs, catalogue and tokenizer stay clear; the device then needs the key")
    sp.set_defaults(fn=cmd_export)
