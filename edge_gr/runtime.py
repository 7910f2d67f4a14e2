"""The device runtime: load a bundle, answer queries with trie-constrained beam search.

>>> r = edge_gr.load("bundle/", backend="auto")                      # doctest: +SKIP
>>> r.search("god so loved the world", k=3)                          # doctest: +SKIP
[Hit(item_id='John.3.16', score=-0.41, title='For God so loved the world, ...'), ...]
>>> r.variants, r.variant                                             # doctest: +SKIP
(['executorch-fp32', 'executorch-int8', 'onnxruntime-fp32', ...], 'executorch-fp32')
>>> r.switch("onnxruntime-int8")                                      # doctest: +SKIP

Retrieval bundles take text (checked: empty, over 10,000 characters or not valid
Unicode -> :class:`~edge_gr.errors.InputError`); recommendation bundles take a
history (item ids, oldest first): unknown ids are dropped, and an empty history gets
the bundle's popularity ranking (score ``nan``). ``k``, ``beam`` and the queries are
checked by :mod:`edge_gr.validate`, the same checks as the cloud model's; a manifest
that lacks a role the runtime reads is a :class:`~edge_gr.errors.BundleError`.

An encrypted bundle (exported with ``encrypt=``, :mod:`edge_gr.sealed`) needs ``key_provider=``:
its variant files are verified (sha256 of the ciphertext), decrypted into memory and loaded from
bytes, never written to disk in the clear; no provider, a missing key, a wrong key or an altered
file is a :class:`~edge_gr.errors.SealedError` saying what to do.

>>> from edge_gr.sealed import FileKeyProvider
>>> r = edge_gr.load("bundle/", key_provider=FileKeyProvider("data.key"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from . import backends as _backends
from .bundle import BundleManifest, Variant, open_bundle, verify_files
from .decode import beam_search
from .errors import BackendUnavailableError, BundleError, InputError, SealedError
from .ids import SemanticIds
from .search import Hit
from .text import check_query, encode
from .validate import check_beam, check_flag, check_history, check_k, check_queries

__all__ = ["load", "Retriever", "Hit"]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    """float32 log-softmax over the last axis (one pass: max, exp-sum, subtract)."""
    x = np.asarray(x, dtype=np.float32)
    m = x.max(-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))


class _Model:
    """A loaded variant: session + the padding its static shapes need."""

    def __init__(self, variant: Variant, root: Path, threads: int | None, max_len: int, keys=None):
        files = _variant_files(variant, root, keys)
        self.variant = variant
        self.session = _backends.open_session(variant.backend, files, threads=threads)
        self.static = dict(getattr(self.session, "static", {}) or variant.static or {})
        # the encoder input length of this variant (a student may read a shorter history than the bundle's max_len)
        self.max_len = int((variant.static or {}).get("max_len") or max_len)
        # the lean decoder (role ``step``: one position per call, fixed-slot KV cache) where the variant has it
        self.has_step = "step" in variant.files and callable(getattr(self.session, "step", None))
        self.dynamic_src = bool(getattr(self.session, "dynamic_src", False))  # encoder takes any text length <= max_len

    def _limits(self) -> tuple[int | None, int | None, bool, bool]:
        st = self.static
        n, b = st.get("batch"), st.get("beam")  # fixed shapes (pad up to them)
        return n or st.get("max_batch"), b or st.get("max_beam"), bool(n), bool(b)

    def encode(self, src: np.ndarray) -> list[np.ndarray]:
        n, _, fixed, _ = self._limits()
        if not n or src.shape[0] == n or (not fixed and src.shape[0] < n):
            return self.session.encode(src)
        parts = []
        for s in range(0, src.shape[0], n):  # run in chunks of the batch limit, padding the last one if shapes are fixed
            chunk = src[s:s + n]
            pad = n - chunk.shape[0] if fixed else 0
            out = self.session.encode(np.concatenate([chunk, np.repeat(chunk[:1], pad, 0)]) if pad else chunk)
            parts.append([o[:chunk.shape[0]] for o in out])
        return [np.concatenate(p) for p in zip(*parts)]

    def decode(self, prefix: np.ndarray, enc: list[np.ndarray]) -> np.ndarray:
        n, b, fixed_n, fixed_b = self._limits()
        if not n and not b:
            return self.session.decode(prefix, enc)
        N, B, L = prefix.shape
        if b and B > b:
            raise InputError(f"variant {self.variant.name} was exported for at most {b} beams, got {B}",
                             hint=f"pass beam <= {b} or use a variant without this limit")
        if fixed_b and B < b:
            prefix = np.concatenate([prefix, np.zeros((N, b - B, L), prefix.dtype)], 1)
        n = n or N
        outs = []
        for s in range(0, N, n):
            p, e = prefix[s:s + n], [x[s:s + n] for x in enc]
            pad = n - p.shape[0] if fixed_n else 0
            if pad:
                p = np.concatenate([p, np.repeat(p[:1], pad, 0)])
                e = [np.concatenate([x, np.repeat(x[:1], pad, 0)]) for x in e]
            outs.append(self.session.decode(p, e)[: p.shape[0] - pad])
        return np.concatenate(outs)[:, :B]


    def step(self, tok: np.ndarray, pos: int, enc: list[np.ndarray], cache: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """The lean step within the variant's shape limits: chunks of the batch limit, beams padded where fixed."""
        n, b, fixed_n, fixed_b = self._limits()
        N, B = tok.shape
        if not n and not b:
            return self.session.step(tok, pos, enc, cache)
        if b and B > b:
            raise InputError(f"variant {self.variant.name} was exported for at most {b} beams, got {B}",
                             hint=f"pass beam <= {b} or use a variant without this limit")
        if fixed_b and B < b:  # pad beams (copies of beam 0: their answers are dropped)
            tok = np.concatenate([tok, np.repeat(tok[:, :1], b - B, 1)], 1)
            cache = [np.concatenate([c, np.repeat(c[:, :1], b - B, 1)], 1) for c in cache]
        n = n or N
        logits, caches = [], []
        for s in range(0, N, n):
            t, e, c = tok[s:s + n], [x[s:s + n] for x in enc], [x[s:s + n] for x in cache]
            pad = n - t.shape[0] if fixed_n else 0
            if pad:
                t, e, c = (np.concatenate([t, np.repeat(t[:1], pad, 0)]), [np.concatenate([x, np.repeat(x[:1], pad, 0)]) for x in e],
                           [np.concatenate([x, np.repeat(x[:1], pad, 0)]) for x in c])
            lg, nc = self.session.step(t, pos, e, c)
            keep = t.shape[0] - pad
            logits.append(lg[:keep, :B])
            caches.append([x[:keep, :B] for x in nc])
        return np.concatenate(logits), [np.concatenate(p) for p in zip(*caches)]


def _variant_files(variant: Variant, root: Path, keys) -> dict:
    """Role -> path, or for a sealed file its plaintext in memory (decrypted once per file; verify the files first)."""
    out, opened = {}, {}
    for role, f in variant.files.items():
        if f.sealed is None:
            out[role] = root / f.path
            continue
        if f.path not in opened:
            from .sealed import unseal_entry

            opened[f.path] = _backends.Blob(root / f.path, unseal_entry(root, f, keys))
        out[role] = opened[f.path]
    return out


class Retriever:
    """A loaded bundle. Build with :func:`load`; thread-safe for concurrent ``search`` and ``switch``."""

    def __init__(self, manifest: BundleManifest, root: Path, keep, model: _Model, threads: int | None, *, key_provider=None):
        self.manifest, self.root, self._keep, self._model, self._threads = manifest, root, keep, model, threads
        self._keys = key_provider  # for switch() to another sealed variant
        self._lock = threading.Lock()
        self.lean = True  # use a variant's lean decoder step when it has one (False: the full-prefix graph, for comparison)
        rt = manifest.runtime
        self.task, self.levels = manifest.task, tuple(rt.levels)
        self._offsets = np.concatenate([[0], np.cumsum(self.levels)[:-1]]).astype(np.int64)
        self._read_files(manifest, root)

    def _read_files(self, manifest: BundleManifest, root: Path) -> None:
        """The shared files (verified by sha256, so damage was refused already; a bundle *built* wrong is refused here)."""
        manifest.check_runnable()
        cat = root / manifest.files["catalogue"].path
        where = cat
        try:
            if "index" in manifest.files:  # the compact index: arrays, titles parsed only for the hits
                from .catalogue import load_index

                where = root / manifest.files["index"].path
                self.ids, self._title = load_index(where, cat)
            else:  # older bundles: parse ids.json and every catalogue line
                where = root / manifest.files["ids"].path
                self.ids = SemanticIds.load(where)
                where = cat
                titles: dict[str, str] = {}
                with open(cat, encoding="utf-8") as f:
                    for line in f:
                        if line.strip():
                            rec = json.loads(line)
                            titles[str(rec["id"])] = str(rec.get("title", ""))
                self._title = lambda item: titles.get(item, "")
            self.popularity: list[str] = []
            if "popularity" in manifest.files:
                where = root / manifest.files["popularity"].path
                pop = json.loads(where.read_bytes().decode("utf-8"))
                if not isinstance(pop, list) or not all(isinstance(i, str) for i in pop):
                    raise ValueError("expected a list of item ids")
                self.popularity = pop
        except (ValueError, KeyError, TypeError, AttributeError, OSError, RecursionError) as e:
            raise BundleError(f"{where} cannot be read ({type(e).__name__}: {str(e)[:200]})",
                              hint="re-export the bundle with `edge-gr export`") from None
        if tuple(self.ids.levels) != self.levels:
            raise BundleError(f"manifest.json: runtime.levels is {list(self.levels)} but the semantic IDs have levels {list(self.ids.levels)}",
                              hint="re-export the bundle with `edge-gr export`")
        self.tokenizer = None
        if self.task == "retrieval":
            from tokenizers import Tokenizer

            tok = root / manifest.files["tokenizer"].path
            try:
                self.tokenizer = Tokenizer.from_file(str(tok))
            except Exception as e:  # the tokenizers library raises plain Exception for a bad file
                raise BundleError(f"{tok} is not a tokenizer ({str(e)[:200]})", hint="re-export the bundle with `edge-gr export`") from None

    # -- variants --------------------------------------------------------------
    @property
    def variants(self) -> list[str]:
        """Names of every variant in the bundle."""
        return [v.name for v in self.manifest.variants]

    @property
    def threads(self) -> int:
        """CPU threads the serving variant's backend reports it runs on (0 = the backend's default pool)."""
        return int(getattr(self._model.session, "threads", 0) or 0)

    @property
    def max_len(self) -> int:
        """Encoder input length of the serving variant (rec: the newest ``max_len`` history items are read)."""
        return self._input_len(self._model)

    def _input_len(self, model) -> int:
        return int(getattr(model, "max_len", 0) or self.manifest.runtime.max_len)  # stand-in models (tests, replay) lack it

    @property
    def variant(self) -> str:
        """The variant serving now."""
        return self._model.variant.name

    def switch(self, variant: str) -> None:
        """Serve ``variant`` from now on. It is loaded and test-run first; if that fails the old one keeps serving."""
        v = self.manifest.variant(variant)
        verify_files(self.root, v.files.values())  # load verified only the serving variant's files
        new = _open(v, self.root, self._threads, self, keys=self._keys)
        with self._lock:
            self._model = new

    # -- search ----------------------------------------------------------------
    def search(self, query: str | Sequence[str], k: int = 10, *, beam: int | None = None, exclude_seen: bool = False) -> list[Hit]:
        """Top-``k`` hits for one query (text for retrieval bundles, a history of item ids for rec bundles).

        The :class:`~edge_gr.search.Searcher` protocol, shared with the cloud model."""
        return self.search_many([query], k, beam=beam, exclude_seen=exclude_seen)[0]

    def search_many(self, queries: Sequence[str | Sequence[str]], k: int = 10, *, beam: int | None = None,
                    exclude_seen: bool = False) -> list[list[Hit]]:
        """Batched :meth:`search` (one encoder call and one decoder call per level for all queries).

        Arguments are checked by :mod:`edge_gr.validate` (the cloud model's checks):
        :class:`~edge_gr.errors.InputError` for a bad ``k``, ``beam``, query or history."""
        queries = check_queries(queries, self.task)
        k = check_k(k, len(self.ids))
        beam = check_beam(beam, k)
        exclude = check_flag(exclude_seen) and self.task == "rec"
        want = min(beam, len(self.ids)) if exclude else k  # seen items are dropped from the top `beam`
        with self._lock:
            model = self._model
        n = self._input_len(model)
        src = self._rec_src(queries, n) if self.task == "rec" else self._text_src(queries, model, n)
        live = np.flatnonzero((src != 0).any(1))
        out: list[list[Hit]] = [[] for _ in queries]
        if len(live):
            items, scores = self._decode(model, src[live], want, beam)
            for r, ir, sr in zip(live, items, scores):
                seen = set(queries[r]) if exclude else ()
                out[r] = [self._hit(self.ids.items[i], float(s)) for i, s in zip(ir, sr) if i >= 0 and self.ids.items[i] not in seen][:k]
        for r in np.flatnonzero(~(src != 0).any(1)):  # rec: no known item -> popularity fallback
            seen = set(queries[r]) if exclude else ()
            out[r] = [self._hit(i, float("nan")) for i in self.popularity if i not in seen][:k]
        return out

    def _hit(self, item: str, score: float) -> Hit:
        return Hit(item, score, self._title(item))

    def _rec_src(self, histories, max_len: int) -> np.ndarray:
        src = np.zeros((len(histories), max_len), dtype=np.int64)
        for r, h in enumerate(histories):
            rows = [self.ids._index[i] + 1 for i in check_history(h) if i in self.ids._index][-max_len:]
            if rows:
                src[r, max_len - len(rows):] = rows
        return src

    def _text_src(self, texts, model: _Model, max_len: int) -> np.ndarray:
        texts = [check_query(t) for t in texts]
        if not getattr(model, "dynamic_src", False):
            return encode(self.tokenizer, texts, max_len, width=max_len)
        src = encode(self.tokenizer, texts, max_len)  # the longest query's real length, not max_len: the same answer
        return np.pad(src, ((0, 0), (0, 1))) if src.shape[1] < 2 else src

    def _decode(self, model: _Model, src: np.ndarray, k: int, beam: int) -> tuple[np.ndarray, np.ndarray]:
        if getattr(model, "has_step", False) and self.lean:  # a stand-in model (tests, replay) may have only decode
            return self._decode_step(model, src, k, beam)
        enc = model.encode(src)
        L, off = len(self.levels), self._offsets

        def step(prefix: np.ndarray) -> np.ndarray:
            n, b, l = prefix.shape
            inp = np.zeros((n, b, L), dtype=np.int64)  # 0 = BOS; positions after l are ignored (causal)
            inp[:, :, 1:l + 1] = prefix + off[:l] + 1
            logits = model.decode(inp, enc)[:, :, l]  # (n, b, V)
            return _log_softmax(logits[..., off[l]:off[l] + self.levels[l]])

        return beam_search(step, self.ids.trie(), n=src.shape[0], beam=beam, k=k)

    def _decode_step(self, model: _Model, src: np.ndarray, k: int, beam: int) -> tuple[np.ndarray, np.ndarray]:
        """Lean decoding: one position per level for every beam, the self-attention KV cache carried
        between levels and reordered by each beam's parent (exactly the full-prefix decoder's answer)."""
        enc = model.encode(src)
        off, n = self._offsets, src.shape[0]
        st: dict = {"cache": None, "parent": None}

        def step(prefix: np.ndarray) -> np.ndarray:
            _, b, l = prefix.shape
            if l == 0:
                tok = np.zeros((n, b), dtype=np.int64)  # BOS
                st["cache"] = [np.zeros((n, b, *s), dtype=np.float32) for s in model.session.cache_shapes]
            else:
                tok = prefix[:, :, -1] + off[l - 1] + 1
                par = st["parent"]
                if n == 1:  # one query (the phone's case): a plain take along the beam axis
                    st["cache"] = [c.take(par[0], axis=1) for c in st["cache"]]
                else:
                    rows = np.arange(n)[:, None]
                    st["cache"] = [c[rows, par] for c in st["cache"]]
            logits, st["cache"] = model.step(tok, l, enc, st["cache"])
            return _log_softmax(logits[..., off[l]:off[l] + self.levels[l]])

        return beam_search(step, self.ids.trie(), n=n, beam=beam, k=k, on_select=lambda parent: st.__setitem__("parent", parent))


def _open(variant: Variant, root: Path, threads: int | None, r: Retriever | None = None, manifest: BundleManifest | None = None,
          keys=None) -> _Model:
    """Open a variant and run one tiny query through it, so a broken file fails here, not mid-request."""
    rt = (manifest or r.manifest).runtime
    try:
        model = _Model(variant, root, threads, rt.max_len, keys)
        enc = model.encode(np.ones((1, model.max_len), dtype=np.int64))
        model.decode(np.zeros((1, 1, len(rt.levels)), dtype=np.int64), enc)
    except (BackendUnavailableError, InputError, SealedError):
        raise
    except Exception as e:  # any runtime failure: report it as a bundle problem, keep the caller's state
        raise BundleError(f"variant {variant.name} ({variant.backend}) loads but does not run ({type(e).__name__}: {e})",
                          hint="re-export it, or choose another variant") from e
    return model


def load(path: str | os.PathLike, backend: str = "auto", variant: str | None = None, *, threads: int | None = None,
         key_provider=None) -> Retriever:
    """Verify a bundle (folder or ``.tar``) and load one variant.

    ``variant`` picks one by name; else the first variant of ``backend``, where ``"auto"``
    tries executorch, onnxruntime, litert, torch in that order and takes the first whose
    package is installed. ``threads`` caps the backend's CPU threads (None = its default).
    ``key_provider`` (an :class:`edge_gr.sealed.KeyProvider`) opens encrypted variants: their files are
    verified as stored, then decrypted into memory (:class:`~edge_gr.errors.SealedError` if that fails).
    """
    manifest, root, keep = open_bundle(path, variants=())  # the shared files now, a variant's own files when it is chosen
    manifest.check_runnable()  # the roles the runtime reads (a task edited by hand, a role missing): BundleError, not KeyError
    if variant is not None:
        chosen = [manifest.variant(variant)]
    else:
        order = _backends.AUTO_ORDER if backend == "auto" else (backend,)
        chosen = [v for b in order for v in manifest.variants if v.backend == b]
        if backend != "auto" and not chosen:
            raise BundleError(f"the bundle has no {backend} variant", hint=f"pick one of {[v.name for v in manifest.variants]}")
    errors = []
    for v in chosen:
        if backend == "auto" and variant is None:
            if not _backends.available(v.backend) or v.backend in errors:
                continue
        verify_files(root, v.files.values())
        try:
            model = _open(v, root, threads, manifest=manifest, keys=key_provider)
        except BackendUnavailableError:
            if backend == "auto" and variant is None:
                errors.append(v.backend)
                continue
            raise
        return Retriever(manifest, root, keep, model, threads, key_provider=key_provider)
    raise BackendUnavailableError(f"none of the bundle's backends is installed ({sorted({v.backend for v in manifest.variants})})",
                                  hint="`pip install onnxruntime==1.32.0` (or executorch / ai-edge-litert)")
