"""Shared test vectors for the Kotlin core (android_demo/core), written by the Python runtime.

Every expected value here comes from the real ``edge_gr`` code: a tiny recommendation bundle
is written with :class:`edge_gr.bundle.BundleWriter`, searched with :class:`edge_gr.runtime.Retriever`
(the real request path: history -> encoder input, trie-constrained beam search, popularity
fallback) over a *replay model* whose decoder logits are a deterministic function of the query
and the decoder-id prefix, and every logits row the runtime asked for is recorded. The Kotlin
tests replay those rows (looked up by query and prefix) instead of running a model, and must
agree exactly on item IDs and within 1e-5 on scores. Battery traces go through
:class:`edge_gr.policy.VariantPolicy`; corrupted copies of the bundle through
:func:`edge_gr.bundle.load_manifest`, whose error messages the Kotlin side must repeat.

    .venv/bin/python android_demo/make_vectors.py --out DIR      # writes DIR/{bundle,cases,*.json}

Nothing generated is committed: ``android_demo/core/run_tests.sh`` writes the vectors into a
temporary folder on every run, so the two sides cannot drift apart.

Layout of DIR::

    bundle/            a valid rec bundle (manifest, ids.json, catalogue.jsonl, popularity.json, 3 placeholder .pte)
    search.json        {"bundle": "bundle", "queries": [{"name", "history", "k", "beam", "src", "expected": [[id, score]...],
                         "logits": [[decoder ids (BOS, 1+offset+code ...)], [V raw float32 logits]]...}], "trie": ...}
    beam.json          direct edge_gr.decode.beam_search cases (batch, padding): logp by code prefix -> items, scores
    policy.json        {"traces": [{"name", "config", "states": [...], "expected": [[variant, tier, since]...]}]}
    bundle_cases.json  {"cases": [{"name", "path", "error": str(BundleError) | null, "compare": "exact" | "prefix"}]}
    cases/<name>/      the corrupted bundle copies
    search-real.json   with --real: the same as search.json for real-bundle/ (a trained model, ExecuTorch fp32)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np

# The vectors must come from *this* checkout's edge_gr, not from whatever is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_gr.bundle import BundleWriter, RuntimeSpec, load_manifest  # noqa: E402
from edge_gr.decode import beam_search  # noqa: E402
from edge_gr.errors import BundleError  # noqa: E402
from edge_gr.ids import SemanticIds  # noqa: E402
from edge_gr.policy import DeviceState, VariantPolicy  # noqa: E402
from edge_gr.runtime import Retriever  # noqa: E402

__all__ = ["write_vectors"]

LEVELS = (4, 3, 5)   # codes per ID level; V = 12 decoder logits
N_ITEMS = 30
MAX_LEN = 6          # encoder input length (items, left-padded)
PRECISIONS = ("fp32", "int8", "int4")


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


# -- the bundle -------------------------------------------------------------------------------
def _catalogue() -> tuple[list[str], list[str], np.ndarray]:
    rng = np.random.default_rng(7)
    space = np.array(np.meshgrid(*[np.arange(k) for k in LEVELS], indexing="ij")).reshape(len(LEVELS), -1).T
    codes = space[np.sort(rng.choice(len(space), N_ITEMS, replace=False))]
    rng.shuffle(codes)  # item order unrelated to code order: leaf numbers must follow the items
    items = [f"item-{i:02d}" for i in range(N_ITEMS)]
    titles = [f"Title {i}" for i in range(N_ITEMS)]
    titles[1], titles[2], titles[3] = "Amélie (2001)", "東京物語 — \"Tokyo Story\"", "tab\tand \\ backslash"
    return items, titles, codes


def write_bundle(out: Path) -> Path:
    items, titles, codes = _catalogue()
    ids = SemanticIds(items, codes, LEVELS, meta={"method": "vectors"})
    spec = RuntimeSpec("rec", LEVELS, MAX_LEN, 8)
    with BundleWriter(out, task="rec", model_version="vectors-1", runtime=spec, id_scheme={"levels": list(LEVELS)},
                      meta={"note": "test vectors for android_demo/core; the .pte files are placeholders"}) as w:
        ids.save(w.root / "ids.json")
        w.add_file("ids", "ids.json", w.root / "ids.json")
        w.add_file("catalogue", "catalogue.jsonl", "".join(
            json.dumps({"id": i, "title": t, "meta": {}}, ensure_ascii=False) + "\n" for i, t in zip(items, titles)).encode())
        w.add_file("popularity", "popularity.json", json.dumps(items[::-1][:12]).encode())
        for p in PRECISIONS:
            rel = Path("variants") / f"executorch-{p}"
            (w.root / rel).mkdir(parents=True)
            (w.root / rel / "model.pte").write_bytes(np.random.default_rng(_seed(p)).bytes(64 + len(p)))
            w.add_variant(f"executorch-{p}", "executorch", p, {"program": (rel / "model.pte").as_posix()},
                          static={"max_batch": 32, "max_beam": 64})
    return out


# -- search: the Python runtime over a replay model -----------------------------------------------
class ReplayModel:
    """Stands in for ``runtime._Model``: the encoder passes the source row through, the decoder's
    logits at position ``p`` are a deterministic function of (source row, decoder ids[:p+1]).
    Every row computed for a real prefix is recorded, keyed by the source row."""

    def __init__(self, variant, modes: dict[tuple, str]):
        self.variant, self.modes = variant, modes
        self.recorded: dict[tuple, dict[tuple, np.ndarray]] = {}

    def encode(self, src: np.ndarray) -> list[np.ndarray]:
        return [src.copy()]

    def _row(self, src: tuple, key: tuple) -> np.ndarray:
        V = sum(LEVELS)
        mode = self.modes.get(src, "random")
        if mode == "uniform":  # every code equally likely: the order comes from the tie-breaking alone
            return np.zeros(V, dtype=np.float32)
        x = (np.random.default_rng(_seed(src, key)).standard_normal(V) * 2.5).astype(np.float32)
        if mode == "nonfinite" and len(key) == 2:  # level 1: one prefix with a NaN, one with +inf, one with -inf
            which = key[1] % 3
            x[LEVELS[0] + 1] = (np.nan, np.inf, -np.inf)[which]
        return x

    def decode(self, prefix: np.ndarray, enc: list[np.ndarray]) -> np.ndarray:
        src_rows = enc[0]
        N, B, L = prefix.shape
        out = np.empty((N, B, L, sum(LEVELS)), dtype=np.float32)
        for n in range(N):
            src = tuple(int(v) for v in src_rows[n])
            rec = self.recorded.setdefault(src, {})
            for b in range(B):
                for p in range(L):
                    key = tuple(int(v) for v in prefix[n, b, :p + 1])
                    out[n, b, p] = row = self._row(src, key)
                    if all(v >= 1 for v in key[1:]):  # a real prefix (0 after BOS = padding position)
                        rec[key] = row
        return out


QUERIES = [  # name, history, k, beam, mode
    ("short", ["item-03", "item-17", "item-08"], 5, 20, "random"),
    ("long-with-unknown", ["item-01", "item-02", "nope", "item-04", "item-05", "item-06", "item-07", "item-09", "item-11"], 10, 20, "random"),
    ("beam-raised-to-k", ["item-12"], 10, 4, "random"),
    ("narrow-beam", ["item-20", "item-21"], 2, 2, "random"),
    ("all-items", ["item-29", "item-00"], 40, 20, "random"),
    ("ties", ["item-10", "item-15"], 8, 6, "uniform"),
    ("non-finite-logits", ["item-05"], 10, 20, "nonfinite"),
    ("empty-history", [], 5, 20, "random"),
    ("only-unknown", ["x", "y"], 3, 20, "random"),
]


def _f(x: float):
    """A float for JSON: Python's json writes NaN / Infinity / -Infinity for the non-finite ones."""
    return float(x)


def search_vectors(bundle: Path) -> dict:
    from edge_gr.bundle import open_bundle

    manifest, root, keep = open_bundle(bundle)
    model = ReplayModel(manifest.variants[0], {})
    r = Retriever(manifest, root, keep, model, None)
    model.modes = {tuple(int(v) for v in r._rec_src([h], r.max_len)[0]): m for _, h, _, _, m in QUERIES}
    out = []
    for name, history, k, beam, _ in QUERIES:
        src = tuple(int(v) for v in r._rec_src([history], r.max_len)[0])
        with np.errstate(invalid="ignore"):  # the non-finite query: inf - inf in the log-softmax (as on a device)
            hits = r.search(history, k, beam=beam)
        rec = model.recorded.get(src, {})
        out.append({"name": name, "history": history, "k": k, "beam": beam, "src": list(src),
                    "expected": [[h.item_id, _f(h.score)] for h in hits],
                    "logits": [[list(key), [_f(v) for v in row]] for key, row in sorted(rec.items())]})
    trie = r.ids.trie()
    return {"bundle": bundle.name, "levels": list(LEVELS), "max_len": MAX_LEN, "queries": out,
            "trie": [t.tolist() for t in trie.children], "items": r.ids.items, "codes": r.ids.codes.tolist()}


# -- search with a real model (--real): trained here, exported with ExecuTorch ------------------------------
REAL_QUERIES = [  # name, history, k, beam
    ("walk-by-1", ["i0", "i1", "i2", "i3"], 10, 20),
    ("walk-by-2", ["i4", "i6", "i8", "i10"], 5, 10),
    ("longer-than-max-len", [f"i{j % 30}" for j in range(7, 7 + 15)], 10, 20),
    ("with-unknown", ["i20", "zzz", "i21"], 3, 3),
    ("all-items", ["i29"], 30, 30),
    ("empty-history", [], 5, 20),
]


def real_search_vectors(out: Path) -> dict:
    """A tiny rec model trained here (seconds) and exported as an ExecuTorch fp32 bundle - the
    ``.pte`` with methods ``encode``/``decode`` that the Android app loads - searched by
    ``edge_gr.load(...).search``; every decoder row the runtime reads is recorded from the real
    ExecuTorch session. Needs torch and executorch (the project's dev install); ~1-2 min on 2 cores."""
    from server.data.base import Item, RecData
    from server.export.bundle import export_bundle
    from server.model import GRConfig
    from server.semantic_ids import build_ids
    from server.train import TrainConfig, train_rec

    import edge_gr

    n = 30
    items = [Item(f"i{j}", f"item {j}") for j in range(n)]
    data = RecData("toy", items, {f"u{u}": [f"i{(u + (1 + u % 2) * t) % n}" for t in range(12)] for u in range(120)})
    ids = build_ids([f"i{j}" for j in range(n)], np.random.default_rng(0).normal(size=(n, 8)).astype("float32"), levels=(4, 4))
    gm, _ = train_rec(data.split(), data.items, ids, GRConfig(d_model=32, n_heads=2, max_len=12, dropout=0.0, n_enc_layers=1, n_dec_layers=2),
                      TrainConfig(epochs=5, batch_size=32, lr=5e-3, eval_queries=20, beam=10, patience=50, progress=False, warmup_steps=10, seed=0))
    bundle = export_bundle(gm, out / "real-bundle", [("executorch", "fp32")], model_version="vectors-real")
    r = edge_gr.load(bundle, backend="executorch")
    session = r._model.session
    decode = session.decode
    recorded: dict[tuple, np.ndarray] = {}

    def recording_decode(prefix: np.ndarray, enc: list[np.ndarray]) -> np.ndarray:
        logits = decode(prefix, enc)
        for b in range(prefix.shape[1]):
            l = int((prefix[0, b, 1:] != 0).sum())  # codes in this beam's prefix: the position the runtime reads
            recorded[tuple(int(v) for v in prefix[0, b, :l + 1])] = logits[0, b, l]
        return logits

    session.decode = recording_decode
    queries = []
    for name, history, k, beam in REAL_QUERIES:
        recorded.clear()
        hits = r.search(history, k, beam=beam)
        queries.append({"name": name, "history": history, "k": k, "beam": beam, "src": [int(v) for v in r._rec_src([history], r.max_len)[0]],
                        "expected": [[h.item_id, _f(h.score)] for h in hits],
                        "logits": [[list(key), [_f(v) for v in row]] for key, row in sorted(recorded.items())]})
    return {"bundle": bundle.name, "levels": list(r.levels), "max_len": r.max_len, "queries": queries}


# -- beam search alone: batches, padding, -inf scores ---------------------------------------------
def beam_vectors() -> dict:
    cases = []
    for name, items, codes, levels, n, beam, k in [
        ("padding", ["a", "b", "c"], [[0, 0], [0, 1], [1, 0]], (2, 2), 2, 5, 5),
        ("deep", [f"i{j}" for j in range(12)], [[a, b, c] for a in range(2) for b in range(3) for c in range(2)], (2, 3, 2), 3, 3, 2),
        ("sparse", [f"s{j}" for j in range(4)], [[0, 0, 0], [0, 0, 3], [2, 1, 1], [2, 1, 2]], (3, 2, 4), 1, 2, 2),
    ]:
        ids = SemanticIds(items, np.array(codes), levels)
        seen: dict[tuple, list[float]] = {}

        def step(prefix: np.ndarray) -> np.ndarray:
            nq, b, l = prefix.shape
            out = np.empty((nq, b, levels[l]))
            for q in range(nq):
                for j in range(b):
                    key = (q, *map(int, prefix[q, j]))
                    row = np.log(np.random.default_rng(_seed(name, key)).dirichlet(np.ones(levels[l])))
                    out[q, j] = row
                    seen[key] = row.tolist()
            return out

        got_items, got_scores = beam_search(step, ids.trie(), n=n, beam=beam, k=k)
        cases.append({"name": name, "items": items, "codes": codes, "levels": list(levels), "n": n, "beam": beam, "k": k,
                      "logp": [[list(key), row] for key, row in sorted(seen.items())],
                      "expected_items": got_items.tolist(), "expected_scores": [[_f(s) for s in row] for row in got_scores]})
    return {"cases": cases}


# -- the variant policy over battery traces ------------------------------------------------------------
def _walk(seed: int, n: int, *, start: float, step: float, p_charge: float = 0.0, p_thermal: float = 0.0,
          memory: tuple[float, float] | None = None, dt: float | None = None, cycles: float = 2.0) -> list[dict]:
    """A battery trace: ``cycles`` slow discharge/charge swings over [0, 1] plus noise of ``step``
    (so every tier is visited and the readings hover at each threshold), random charging and thermal flips."""
    rng = np.random.default_rng(seed)
    t, out, charging, thermal = 0.0, [], False, "nominal"
    for i in range(n):
        swing = 0.5 + 0.5 * np.cos(np.arccos(2 * start - 1) + 2 * np.pi * cycles * i / n)
        b = float(np.clip(swing + rng.normal(0, step), 0.0, 1.0))
        if rng.random() < p_charge:
            charging = not charging
        if rng.random() < p_thermal:
            thermal = str(rng.choice(["nominal", "fair", "serious", "critical"]))
        s = {"battery": b, "charging": charging, "thermal": thermal}
        if memory is not None:
            s["free_memory_mb"] = float(rng.uniform(*memory))
        if dt is not None:
            t += float(rng.uniform(0.5, 1.5) * dt)
            s["t"] = t
        out.append(s)
    return out


def policy_vectors() -> dict:
    hover = [{"battery": b} for b in (0.9, 0.45, 0.22, 0.18, 0.22, 0.26, 0.19, 0.21, 0.24, 0.25, 0.5, 0.52, 0.549, 0.55, 0.49, 0.2, 0.1999)]
    traces = [
        ("docstring-hover", {"variants": ["fp32", "fp16", "int8", "int4"]}, hover),
        ("random-walk", {"variants": ["fp32", "fp16", "int8", "int4"]}, _walk(1, 400, start=0.8, step=0.03, p_charge=0.02, p_thermal=0.03)),
        ("missing-variants", {"variants": ["fp32", "int8", "mixed"]}, _walk(2, 200, start=0.6, step=0.05, p_thermal=0.05)),
        ("only-fp16", {"variants": ["fp16"]}, _walk(3, 50, start=0.3, step=0.1, p_thermal=0.2)),
        ("custom-thresholds", {"variants": ["fp32", "int8", "int4"], "thresholds": [[0.15, "int4"], [0.35, "int8"], [0.7, "fp16"]],
                               "default": "fp32", "margin": 0.1}, _walk(4, 300, start=0.5, step=0.04)),
        ("memory", {"variants": ["fp32", "fp16", "int8", "int4"], "sizes_mb": {"fp32": 400.0, "fp16": 200.0, "int8": 100.0, "int4": 50.0}},
         _walk(5, 300, start=0.9, step=0.05, p_charge=0.05, memory=(20.0, 450.0))),
        ("dwell", {"variants": ["fp32", "fp16", "int8", "int4"], "min_dwell_s": 60.0},
         _walk(6, 300, start=0.5, step=0.04, p_charge=0.03, p_thermal=0.03, dt=10.0)),
        ("dwell-memory", {"variants": ["fp32", "fp16", "int8", "int4"], "min_dwell_s": 30.0, "margin": 0.02,
                          "sizes_mb": {"fp32": 400.0, "fp16": 200.0, "int8": 100.0, "int4": 50.0}},
         _walk(7, 300, start=0.7, step=0.05, p_charge=0.05, p_thermal=0.05, memory=(40.0, 500.0), dt=5.0)),
    ]
    out = []
    for name, cfg, states in traces:
        kw = dict(cfg)
        variants = kw.pop("variants")
        if "thresholds" in kw:
            kw["thresholds"] = [tuple(x) for x in kw["thresholds"]]
        p = VariantPolicy(variants, **kw)
        expected = []
        for s in states:
            v = p.choose(DeviceState(**s))
            d = p.last
            expected.append([v, d.tier, d.since])
        out.append({"name": name, "config": cfg, "states": states, "expected": expected})
    return {"traces": out}


# -- corrupted bundles and Python's errors ---------------------------------------------------------------
def _edit_manifest(root: Path, fn) -> None:
    d = json.loads((root / "manifest.json").read_text())
    fn(d)
    (root / "manifest.json").write_text(json.dumps(d, indent=1))


def _flip_byte(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0x01
    p.write_bytes(bytes(b))


CORRUPTIONS = {  # name -> (edit, how the Kotlin message is compared: "exact" or "prefix" = up to the "(" of Python's detail)
    "ok": (lambda r: None, "exact"),
    "truncated-manifest": (lambda r: (r / "manifest.json").write_text((r / "manifest.json").read_text()[:200]), "prefix"),
    "not-json": (lambda r: (r / "manifest.json").write_text("<html>502 Bad Gateway</html>"), "prefix"),
    "not-utf8": (lambda r: (r / "manifest.json").write_bytes(b'{"format": "\xff\xfe"}'), "prefix"),
    "not-an-object": (lambda r: (r / "manifest.json").write_text("[1, 2, 3]"), "exact"),
    "wrong-format": (lambda r: _edit_manifest(r, lambda d: d.update(format="edge-gr-something")), "exact"),
    "wrong-version": (lambda r: _edit_manifest(r, lambda d: d.update(format_version=2)), "exact"),
    "missing-version": (lambda r: _edit_manifest(r, lambda d: d.pop("format_version")), "exact"),
    "missing-runtime": (lambda r: _edit_manifest(r, lambda d: d.pop("runtime")), "prefix"),
    "missing-sha256": (lambda r: _edit_manifest(r, lambda d: d["files"]["ids"].pop("sha256")), "prefix"),
    "missing-variant-name": (lambda r: _edit_manifest(r, lambda d: d["variants"][1].pop("name")), "prefix"),
    "no-manifest": (lambda r: (r / "manifest.json").unlink(), "exact"),
    "sha256-mismatch": (lambda r: _flip_byte(r / "catalogue.jsonl"), "exact"),
    "variant-sha256-mismatch": (lambda r: _flip_byte(r / "variants" / "executorch-int4" / "model.pte"), "exact"),
    "size-mismatch": (lambda r: (r / "popularity.json").write_bytes((r / "popularity.json").read_bytes() + b" "), "exact"),
    "missing-file": (lambda r: (r / "variants" / "executorch-int8" / "model.pte").unlink(), "exact"),
    "outside-the-bundle": (lambda r: _edit_manifest(r, lambda d: d["files"].update(
        extra={"path": "../outside.txt", "sha256": "0" * 64, "size": 1})), "exact"),
}


def bundle_cases(bundle: Path, out: Path) -> dict:
    cases = []
    for name, (edit, compare) in CORRUPTIONS.items():
        root = out / name
        shutil.copytree(bundle, root)
        edit(root)
        try:
            load_manifest(str(root))
            err = None
        except BundleError as e:
            err = {"message": e.message, "hint": e.hint, "text": str(e)}
        cases.append({"name": name, "path": str(root), "error": err, "compare": compare})
    return {"cases": cases}


def trust_vectors() -> dict:
    """Signed-update cases (edge_gr.trust): each with the verdict Python's TrustPolicy reaches; Kotlin must agree."""
    import base64
    import datetime

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge_gr.errors import TrustError
    from edge_gr.trust import RELEASE_TYPE, ROOT_TYPE, SPEC, TrustPolicy, iso, parse_root, root_payload, sign_envelope

    key = {n: Ed25519PrivateKey.from_private_bytes(bytes([_seed(n) % 256]) * 32) for n in ("root", "targets", "targets2", "root2", "evil")}
    now = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)
    day = datetime.timedelta(days=1)
    root1 = sign_envelope(ROOT_TYPE, root_payload(1, {"root": [key["root"]], "targets": [key["targets"]]}, expires=now + 365 * day),
                          [key["root"]])
    root2 = sign_envelope(ROOT_TYPE, root_payload(2, {"root": [key["root2"]], "targets": [key["targets2"]]}, expires=now + 365 * day),
                          [key["root"], key["root2"]])
    fake2 = sign_envelope(ROOT_TYPE, root_payload(2, {"root": [key["evil"]], "targets": [key["evil"]]}, expires=now + 365 * day),
                          [key["evil"]])

    def rel(version, frm, *, rollback=False, expires=30, k="targets"):
        return sign_envelope(RELEASE_TYPE, {"_type": "release", "spec": SPEC, "version": version, "from": frm, "rollback": rollback,
                                            "expires": iso(now + expires * day), "update": {"sha256": "a" * 64, "size": 10},
                                            "manifest": {"sha256": "b" * 64, "size": 20}}, [key[k]])

    tampered = rel("v1.2", "v1.1")
    body = json.loads(base64.b64decode(tampered["payload"]))
    body["version"] = "v9.0"
    tampered["payload"] = base64.b64encode(json.dumps(body).encode()).decode()
    cases = {
        "ok-delta": (rel("v1.2", "v1.1"), "v1.1", []), "ok-full-first": (rel("v1.0", None), None, []),
        "tampered": (tampered, "v1.1", []), "wrong-key": (rel("v1.2", "v1.1", k="evil"), "v1.1", []),
        "expired": (rel("v1.2", "v1.1", expires=-1), "v1.1", []), "downgrade": (rel("v1.0", "v1.2"), "v1.2", []),
        "replay-same": (rel("v1.1", "v1.0"), "v1.1", []), "wrong-base": (rel("v1.3", "v1.2"), "v1.1", []),
        "delta-on-empty": (rel("v1.2", "v1.1"), None, []), "rollback-ok": (rel("v1.0", "v1.2", rollback=True), "v1.2", []),
        "rollback-other-state": (rel("v1.0", "v1.1", rollback=True), "v1.2", []),
        "rollback-not-older": (rel("v1.3", "v1.2", rollback=True), "v1.2", []),
        "rotated-ok": (rel("v1.2", "v1.1", k="targets2"), "v1.1", [root2]),
        "rotated-missing-root": (rel("v1.2", "v1.1", k="targets2"), "v1.1", []),
        "old-key-after-rotation": (rel("v1.2", "v1.1"), "v1.1", [root2]),
        "fake-rotation": (rel("v1.2", "v1.1", k="evil"), "v1.1", [fake2]),
        "not-json": ("{not json", "v1.1", []),
    }
    out = []
    for name, (doc, installed, roots) in cases.items():
        text = doc if isinstance(doc, str) else json.dumps(doc)
        pol = TrustPolicy(parse_root(root1))
        try:
            pol.rotate(roots, now=now)
            r = pol.check_release(json.loads(text), installed=installed, now=now)
            verdict = {"ok": True, "version": r["version"], "rollback": r["rollback"], "root_version": pol.root.version}
        except (TrustError, json.JSONDecodeError) as e:
            verdict = {"ok": False, "error": str(e)}
        out.append({"name": name, "release": text, "installed": installed, "roots": [json.dumps(r) for r in roots], **verdict})
    return {"root": json.dumps(root1), "now": iso(now), "cases": out}


def write_vectors(out: str | Path, *, real: bool = False) -> Path:
    """Write every vector set into ``out`` (recreated); ``real=True`` adds search-real.json (a trained, exported model)."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    bundle = write_bundle(out / "bundle")
    (out / "search.json").write_text(json.dumps(search_vectors(bundle), ensure_ascii=False))
    (out / "beam.json").write_text(json.dumps(beam_vectors()))
    (out / "policy.json").write_text(json.dumps(policy_vectors()))
    (out / "bundle_cases.json").write_text(json.dumps(bundle_cases(bundle, out / "cases"), ensure_ascii=False))
    (out / "trust.json").write_text(json.dumps(trust_vectors()))
    if real:
        (out / "search-real.json").write_text(json.dumps(real_search_vectors(out)))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder to (re)create with the vectors")
    ap.add_argument("--real", action="store_true", help="also train a tiny model, export it with ExecuTorch and record its logits (1-2 min)")
    args = ap.parse_args(argv)
    write_vectors(args.out, real=args.real)


if __name__ == "__main__":
    main()
