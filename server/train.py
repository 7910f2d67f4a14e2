"""Training loops for the generative model (single process, or DDP under ``torchrun``).

* :func:`train_rec` - histories -> next item, every position of each history window at once.
* :func:`train_retrieval` - query text -> doc ID, mixed with the indexing task (doc text
  and random windows of it -> doc ID), resampled every epoch.

Both keep the state with the best validation metric, stop early after ``patience``
epochs without improvement, show tqdm progress and are deterministic for a seed on CPU.
Under ``torchrun --nproc_per_node N`` (gloo on CPU, nccl on GPU) each rank trains on
its shard of every epoch's batches and gradients are all-reduced by DDP; rank 0
evaluates and saves.

>>> cfg = TrainConfig(epochs=1, batch_size=8)     # doctest: +SKIP
>>> gm, log = train_rec(split, items, ids, GRConfig(), cfg)   # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from edge_gr.ids import SemanticIds

from .data.base import Item, Query, RecSplit, RetrievalData
from .generative import GenerativeModel
from .metrics import rank_metrics
from .model import GenerativeRetriever, GRConfig
from .text import encode, train_tokenizer

__all__ = ["TrainConfig", "train_rec", "train_retrieval", "rec_windows", "retrieval_batches", "seed_everything"]


@dataclass
class TrainConfig:
    epochs: int = 20             # upper bound; early stopping usually ends sooner
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    seed: int = 0
    device: str = "cpu"
    patience: int = 3            # epochs without validation improvement before stopping (ignored under DDP)
    eval_queries: int = 1000     # validation subset size (seeded); 0 = no validation
    beam: int = 20               # beam used for validation
    max_minutes: float | None = None  # wall-clock budget; stops after the epoch that crosses it
    threads: int | None = None   # torch CPU threads (None = torch default)
    progress: bool = True


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _dist() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rec_windows(histories: list[list[int]], max_len: int) -> np.ndarray:
    """Cut each history (1-based item rows) into left-padded windows of ``max_len + 1``.

    Windows end at the history's end and step back by ``max_len``, so every
    transition is trained on exactly once per epoch (SASRec trains only the last window).

    >>> rec_windows([[1, 2, 3, 4, 5]], 2).tolist()
    [[3, 4, 5], [1, 2, 3]]
    """
    out = []
    for h in histories:
        end = len(h)
        while end >= 2:
            w = h[max(0, end - max_len - 1):end]
            out.append([0] * (max_len + 1 - len(w)) + w)
            if end - max_len - 1 <= 0:
                break
            end -= max_len
    return np.array(out, dtype=np.int64).reshape(-1, max_len + 1)


def _fit(model: GenerativeRetriever, make_batches: Callable[[int], list], evaluate: Callable[[], float] | None,
         cfg: TrainConfig, desc: str) -> tuple[dict, list[dict]]:
    """Generic loop: AdamW + linear warmup + cosine decay; returns best state and a per-epoch log."""
    rank, world = _dist()
    dev = torch.device(cfg.device)
    model.to(dev)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "in." not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "in." not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    steps_per_epoch = max(1, len(make_batches(-1)) // world)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    best, best_state, bad, log = -1.0, None, 0, []
    t0 = time.time()
    for epoch in range(cfg.epochs):
        model.train()
        batches = make_batches(epoch)[rank::world][:steps_per_epoch]
        bar = tqdm(batches, desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress or rank != 0, leave=False)
        tot_loss = 0.0
        for batch in bar:
            loss = net(*[b.to(dev) for b in batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            tot_loss += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        entry = {"epoch": epoch + 1, "loss": tot_loss / max(1, len(batches)), "minutes": (time.time() - t0) / 60}
        if rank == 0 and evaluate is not None:
            model.eval()
            entry["valid"] = evaluate()
            if entry["valid"] > best:
                best, bad = entry["valid"], 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
        log.append(entry)
        if rank == 0 and cfg.progress:
            tqdm.write(f"{desc} epoch {epoch + 1}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()))
        stop = (world == 1 and evaluate is not None and bad >= cfg.patience) or (
            cfg.max_minutes is not None and (time.time() - t0) / 60 > cfg.max_minutes)
        if world > 1:  # every rank must agree to stop
            flag = torch.tensor([1.0 if stop else 0.0])
            dist.broadcast(flag, 0)
            stop = bool(flag.item())
        if stop:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.state_dict(), log


def train_rec(split: RecSplit, items: list[Item], ids: SemanticIds, mcfg: GRConfig, cfg: TrainConfig) -> tuple[GenerativeModel, list[dict]]:
    """Train a recommender on ``split.train``; validation NDCG@10 on ``valid_target``."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    mcfg.task, mcfg.n_items, mcfg.levels = "rec", len(ids), ids.levels
    model = GenerativeRetriever(mcfg, codes=torch.from_numpy(ids.codes))
    row = {it: i + 1 for i, it in enumerate(ids.items)}
    hist = [[row[i] for i in h if i in row] for h in split.train.values()]
    windows = rec_windows(hist, mcfg.max_len)
    counts: dict[str, int] = {}
    for h in split.train.values():
        for i in h:
            counts[i] = counts.get(i, 0) + 1
    popularity = sorted(counts, key=lambda i: (-counts[i], i))
    gm = GenerativeModel(model, ids, items, popularity=popularity)

    def make_batches(epoch: int) -> list:
        order = np.random.default_rng(cfg.seed + max(epoch, 0)).permutation(len(windows))
        return [(torch.from_numpy(windows[order[s:s + cfg.batch_size]]),) for s in range(0, len(order), cfg.batch_size)]

    users = [u for u in split.train if split.train[u]]
    users = sorted(np.random.default_rng(cfg.seed).choice(users, min(cfg.eval_queries, len(users)), replace=False).tolist()) if cfg.eval_queries else []

    def evaluate() -> float:
        ranked = gm.rank([split.train[u] for u in users], 10, beam=cfg.beam)
        return rank_metrics([[i for i, _ in r] for r in ranked], [{split.valid_target[u]} for u in users])["ndcg@10"]

    _, log = _fit(model, make_batches, evaluate if users else None, cfg, "rec")
    gm.meta = {"train": asdict(cfg), "n_windows": int(len(windows)), "log": log}
    return gm, log


def _windows(words: list[str], rng: np.random.Generator, lo: int, hi: int) -> str:
    n = int(rng.integers(lo, hi + 1))
    if len(words) <= n:
        return " ".join(words)
    s = int(rng.integers(0, len(words) - n + 1))
    return " ".join(words[s:s + n])


def train_retrieval(data: RetrievalData, ids: SemanticIds, mcfg: GRConfig, cfg: TrainConfig, *,
                    vocab_size: int = 8000, index_windows: int = 2, window_range: tuple[int, int] = (4, 10)) -> tuple[GenerativeModel, list[dict]]:
    """Train query -> doc ID plus the indexing task (doc text and ``index_windows`` random
    windows of it per epoch -> doc ID). Validation Recall@10 on ``data.valid``."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    tok = train_tokenizer((d.text for d in data.docs), vocab_size=vocab_size)
    mcfg.task, mcfg.levels, mcfg.vocab_size = "retrieval", ids.levels, tok.get_vocab_size()
    model = GenerativeRetriever(mcfg)
    gm = GenerativeModel(model, ids, data.docs, tokenizer=tok)
    make_batches = retrieval_batches(tok, ids, data, mcfg.max_len, cfg.batch_size, cfg.seed, index_windows, window_range)
    valid = data.valid[: cfg.eval_queries] if cfg.eval_queries else []

    def evaluate() -> float:
        ranked = gm.search_many([q.text for q in valid], 10, beam=cfg.beam)
        return rank_metrics([[i for i, _ in r] for r in ranked], [q.relevant for q in valid])["recall@10"]

    _, log = _fit(model, make_batches, evaluate if valid else None, cfg, "retrieval")
    gm.meta = {"train": asdict(cfg), "vocab_size": tok.get_vocab_size(), "log": log}
    return gm, log


def retrieval_batches(tok, ids: SemanticIds, data: RetrievalData, max_len: int, batch_size: int, seed: int,
                      index_windows: int = 2, window_range: tuple[int, int] = (4, 10)) -> Callable[[int], list]:
    """``make_batches(epoch)`` for the retrieval task: train queries + full doc texts (encoded once)
    plus ``index_windows`` fresh random windows of each doc per epoch, all -> the doc's ID codes.
    Batches are ``(src (B, S) tokens, codes (B, L))``; ``epoch < 0`` only sizes the epoch."""
    fixed_text = [q.text for q in data.train] + [d.text for d in data.docs]
    fixed_tgt = [ids.index(sorted(q.relevant)[0]) for q in data.train] + [ids.index(d.id) for d in data.docs]
    fixed_src = encode(tok, fixed_text, max_len)
    doc_words = [d.text.split() for d in data.docs]
    doc_rows = [ids.index(d.id) for d in data.docs]

    def make_batches(epoch: int) -> list:
        rng = np.random.default_rng(seed * 1000 + max(epoch, 0))
        win_text = [_windows(doc_words[i], rng, *window_range) for _ in range(index_windows) for i in range(len(doc_words))]
        win_src = encode(tok, win_text, max_len) if epoch >= 0 else np.zeros((len(win_text), 1), dtype=np.int64)
        width = max(fixed_src.shape[1], win_src.shape[1])
        src = np.zeros((len(fixed_src) + len(win_src), width), dtype=np.int64)
        src[: len(fixed_src), : fixed_src.shape[1]] = fixed_src
        src[len(fixed_src):, : win_src.shape[1]] = win_src
        tgt = ids.codes[np.array(fixed_tgt + doc_rows * index_windows)]
        order = rng.permutation(len(src))
        out = []
        for s in range(0, len(order), batch_size):
            b = order[s:s + batch_size]
            w = max(1, int((src[b] != 0).sum(1).max()))
            out.append((torch.from_numpy(src[b, :w]), torch.from_numpy(tgt[b])))
        return out

    return make_batches
