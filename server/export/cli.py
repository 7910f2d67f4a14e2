"""``edge-gr export``: turn a trained checkpoint into a device bundle.

    edge-gr export --checkpoint ckpt/ --out bundle/ [--variants onnxruntime:fp32,onnxruntime:int8] [--archive]
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


def cmd_export(args) -> None:
    from edge_gr.bundle import load_manifest

    from ..generative import GenerativeModel
    from .bundle import DEFAULT_VARIANTS, export_bundle

    gm = GenerativeModel.load(args.checkpoint)
    out = export_bundle(gm, args.out, args.variants or DEFAULT_VARIANTS, model_version=args.model_version, archive=args.archive)
    m = load_manifest(out)
    for v in m.variants:
        print(f"{v.name:<20} {v.backend:<12} {v.precision:<5} {v.size / 1e6:8.2f} MB")
    print(f"wrote {out}" + (f" and {out}.tar" if args.archive else ""))


def add_parser(sub) -> None:
    """Register the ``export`` subcommand on an argparse sub-parser collection."""
    sp = sub.add_parser("export", help="export a checkpoint as a device bundle (ExecuTorch / ONNX Runtime / LiteRT / torch variants)")
    sp.add_argument("--checkpoint", required=True, help="checkpoint folder written by `edge-gr train`")
    sp.add_argument("--out", required=True, help="bundle folder to write (replaced atomically)")
    sp.add_argument("--variants", type=_variants, default=None,
                    help="comma-separated BACKEND:PRECISION (default: executorch fp32/int8/int4, onnxruntime fp32/int8, litert fp32/int8, torch fp32)")
    sp.add_argument("--model-version", default=None, help="version string stored in the manifest (default: export time)")
    sp.add_argument("--archive", action="store_true", help="also write OUT.tar, the single-file bundle")
    sp.set_defaults(fn=cmd_export)
