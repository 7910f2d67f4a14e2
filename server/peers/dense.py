"""Dense peer: all-MiniLM-L6-v2 embeddings + exact inner-product search (faiss).

Embeddings are L2-normalised, so inner product = cosine similarity. Both document and
query embeddings go through :func:`server.embed.embed_texts` and its disk cache.

>>> docs = [Item("a", "For God so loved the world"), Item("b", "Jesus wept")]
>>> p = DensePeer().fit(docs)
>>> p.search(["Jesus cried"], k=1)[0][0][0]
'b'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_gr.errors import DataError
from server.data.base import Item
from server.embed import DIM, embed_texts, load_encoder, model_dir

__all__ = ["DensePeer", "DenseFinetuneConfig", "finetune_minilm", "load_finetuned"]


def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise DataError("the dense peer needs `faiss-cpu`", hint="run `make install`") from e
    return faiss


class _ExactIP:
    """Exact inner-product search in numpy, the same results as ``faiss.IndexFlatIP``; used only
    where faiss cannot be installed (the benchmark's GPU host)."""

    def __init__(self, dim: int):
        self.X = np.zeros((0, dim), dtype=np.float32)

    @property
    def ntotal(self) -> int:
        return len(self.X)

    def add(self, X: np.ndarray) -> None:
        self.X = np.concatenate([self.X, np.asarray(X, dtype=np.float32)])

    def search(self, Q: np.ndarray, k: int):
        S = Q @ self.X.T
        top = np.argpartition(-S, k - 1, axis=1)[:, :k] if k < S.shape[1] else np.tile(np.arange(S.shape[1]), (len(S), 1))
        s = np.take_along_axis(S, top, 1)
        order = np.argsort(-s, axis=1, kind="stable")
        return np.take_along_axis(s, order, 1), np.take_along_axis(top, order, 1)


def _index(dim: int):
    if os.environ.get("EDGE_GR_EXACT_NUMPY") == "1":
        return _ExactIP(dim)
    return _faiss().IndexFlatIP(dim)


class DensePeer:
    """Exact cosine search over MiniLM embeddings of ``Item.text``."""

    name = "dense-minilm"

    def __init__(self, *, batch_size: int = 64, show_progress: bool = False, encoder=None, model_name: str | None = None,
                 model_path: Path | None = None) -> None:
        """``encoder``: another SentenceTransformer (e.g. :func:`finetune_minilm`'s), cached under ``model_name``;
        ``model_path``: its folder (for ``size_bytes``)."""
        self.batch_size = batch_size
        self.encoder, self.model_name, self.model_path = encoder, model_name, model_path
        if encoder is not None:
            self.name = "dense-minilm-finetuned"
        self.show_progress = show_progress
        self.cache_dir: Path | None = None
        self._index = None
        self._ids: list[str] = []

    # Bulk calls (corpus, an evaluation set) are cached on disk; small ones, i.e. real
    # queries, are always encoded, so per-query latency includes the encoder.
    CACHE_MIN = 256

    def _embed(self, texts: list[str]) -> np.ndarray:
        extra = {"encoder": self.encoder, "model_name": self.model_name} if self.encoder is not None else {}
        return embed_texts(texts, cache_dir=self.cache_dir, batch_size=self.batch_size,
                           show_progress=self.show_progress, cache=len(texts) >= self.CACHE_MIN, **extra)

    def fit(self, docs: list[Item], cache_dir: Path | None = None) -> "DensePeer":
        """Embed ``docs`` (cached under ``cache_dir``) and build the index; returns ``self``."""
        if not docs:
            raise DataError("DensePeer.fit got no documents", hint="pass at least one Item")
        self.cache_dir = cache_dir
        self._ids = [d.id for d in docs]
        index = _index(DIM)
        index.add(self._embed([d.text for d in docs]))
        self._index = index
        return self

    def search(self, texts: list[str], k: int = 10) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(doc id, cosine)`` per query, best first."""
        if self._index is None:
            raise DataError("DensePeer.search called before fit", hint="call fit(docs) first")
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        k = min(k, len(self._ids))
        if not texts or k <= 0:
            return [[] for _ in texts]
        scores, idx = self._index.search(self._embed(texts), k)
        return [[(self._ids[i], float(s)) for s, i in zip(row_s, row_i) if i >= 0]
                for row_s, row_i in zip(scores, idx)]

    def for_latency(self) -> None:
        """Per-query latency is a device (CPU) figure: move the encoder to the CPU first."""
        (self.encoder or load_encoder()).to("cpu")

    def n_params(self) -> int:
        """Parameters of the MiniLM encoder (~22.7M)."""
        return sum(p.numel() for p in (self.encoder or load_encoder()).parameters())

    def size_bytes(self) -> int:
        """Index bytes (n x 384 float32) plus the model folder's files on disk."""
        index = 0 if self._index is None else self._index.ntotal * DIM * 4
        folder = self.model_path or model_dir()
        model = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
        return int(index + model)


@dataclass
class DenseFinetuneConfig:
    """Fine-tuning MiniLM on the generative model's own training examples (in-batch negatives)."""

    steps: int = 1000
    batch_size: int = 512          # (window, doc) pairs per step, distinct docs; the other docs are the negatives
    lr: float = 5e-5
    warmup_steps: int = 100
    window: tuple[int, int] = (3, 12)  # the same window distribution as server.sampling
    max_seq_length: int = 64
    seed: int = 0
    device: str = "cpu"
    progress: bool = True


def _pairs(rng: np.random.Generator, texts: list[list[str]], docs: list[str], queries: list[tuple[str, int]],
           n: int, window: tuple[int, int], query_share: float) -> tuple[list[str], list[str]]:
    """``n`` (query, doc text) pairs of distinct docs: windows of a random text of each doc, or
    a training query of it (share ``query_share`` when there are queries)."""
    rows = rng.choice(len(docs), size=min(n, len(docs)), replace=False)
    by_doc: dict[int, list[str]] = {}
    for q, d in queries:
        by_doc.setdefault(d, []).append(q)
    out_q = []
    for d in rows:
        if by_doc.get(d) and rng.random() < query_share:
            out_q.append(by_doc[d][rng.integers(len(by_doc[d]))])
            continue
        words = texts[d][rng.integers(len(texts[d]))].split()
        k = int(rng.integers(window[0], window[1] + 1))
        s = int(rng.integers(0, max(1, len(words) - k + 1)))
        out_q.append(" ".join(words[s:s + k]))
    return out_q, [docs[d] for d in rows]


def finetune_minilm(texts: list[list[str]], docs: list[str], out_dir: Path, cfg: DenseFinetuneConfig,
                    queries: list[tuple[str, int]] = (), query_share: float = 0.25) -> Path:
    """Fine-tune all-MiniLM-L6-v2 with ``MultipleNegativesRankingLoss`` on fresh (window -> doc)
    pairs each step (the generative model's examples, :mod:`server.sampling`), save it to
    ``out_dir`` (a sentence-transformers folder) and return the path. bf16 autocast on CUDA.

    ``texts[d]`` are doc ``d``'s texts to cut windows from, ``docs[d]`` its own text (what is
    indexed), ``queries`` optional ``(text, doc row)`` training queries."""
    import math
    import shutil

    import torch
    from sentence_transformers import SentenceTransformer
    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:  # older releases (e.g. on a GPU host's image)
        from sentence_transformers.losses import MultipleNegativesRankingLoss
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    model = SentenceTransformer(str(model_dir()), device=cfg.device).float()  # fp32 master weights (a copy may be stored fp16)
    model.max_seq_length = cfg.max_seq_length
    loss_fn = MultipleNegativesRankingLoss(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, fused=cfg.device.startswith("cuda"))
    rng = np.random.default_rng(cfg.seed)
    amp = cfg.device.startswith("cuda")
    model.train()
    for step in tqdm(range(cfg.steps), desc="dense fine-tune", disable=not cfg.progress):
        f = min(1.0, (step + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for g in opt.param_groups:
            g["lr"] = cfg.lr * f
        q, d = _pairs(rng, texts, docs, list(queries), cfg.batch_size, cfg.window, query_share)
        prep = getattr(model, "preprocess", None) or model.tokenize  # renamed in sentence-transformers 6
        feats = [{k: (v.to(cfg.device) if torch.is_tensor(v) else v) for k, v in prep(x).items()} for x in (q, d)]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(feats, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.to("cpu").save(str(tmp))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def load_finetuned(path: Path) -> DensePeer:
    """A :class:`DensePeer` over a fine-tuned model folder (not yet fitted)."""
    import hashlib

    from sentence_transformers import SentenceTransformer

    path = Path(path)
    if not (path / "modules.json").is_file():
        raise DataError(f"{path} is not a sentence-transformers model folder", hint="fine-tune one with finetune_minilm()")
    h = hashlib.sha256()
    for f in sorted(path.rglob("*.safetensors")):
        h.update(f.read_bytes())
    enc = SentenceTransformer(str(path), device=os.environ.get("EDGE_GR_EMBED_DEVICE", "cpu")).float()  # weights may be fp16
    return DensePeer(encoder=enc, model_name=f"finetuned-{h.hexdigest()[:16]}", model_path=path)
