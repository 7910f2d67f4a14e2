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
from dataclasses import asdict, dataclass, field, replace
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
from .sampling import SamplerConfig, TextCorpus, WindowSampler
from .text import encode, train_tokenizer

__all__ = ["TrainConfig", "fit", "train_rec", "train_retrieval", "rec_windows", "retrieval_batches", "retrieval_texts", "seed_everything"]


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
    max_minutes: float | None = None  # optional time budget: checked after every step, and it drives the lr schedule
    ema: float = 0.0             # EMA decay of the weights (0 = off); validation and the saved model use the average
    amp: bool = True             # bf16 autocast on CUDA (ignored on CPU: CPU presets stay fp32 and deterministic)
    compile: bool = False        # torch.compile the model (CUDA only)
    steps_per_epoch: int = 200   # sampled retrieval training: steps between validations
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


def _lr_factor(step: int, elapsed_s: float, total: int, warmup: int, budget_s: float | None) -> tuple[float, float]:
    """(lr multiplier, progress in [0, 1]): linear warm-up, then cosine over the step budget or the
    time budget, whichever is spent first - so a time budget shapes the schedule, not only the stop.

    >>> _lr_factor(0, 0.0, 100, 10, None)[0], round(_lr_factor(50, 0.0, 100, 10, None)[0], 3)
    (0.1, 0.5)
    >>> _lr_factor(10, 30.0, 100, 10, 60.0)[1]
    0.5
    """
    p = step / max(1, total)
    if budget_s:
        p = max(p, elapsed_s / budget_s)
    p = min(p, 1.0)
    return min(1.0, (step + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * p)), p


def _gpu_util(dev: torch.device) -> float | None:
    if dev.type != "cuda":
        return None
    try:
        return float(torch.cuda.utilization(dev))
    except Exception:  # pynvml missing or not permitted: report nothing rather than guess
        return None


class _Ema:
    """Exponential moving average of the trainable weights (kept in fp32 beside the model).

    Not ``torch.optim.swa_utils.AveragedModel``: validation and saving go through the model the
    ``GenerativeModel`` wraps, so the average must be swappable into that module in place."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - self.decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange model weights and averaged weights (call twice to restore)."""
        for p, s in zip(self.params, self.shadow):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)


def fit(model: torch.nn.Module, make_batches: Callable[[int], list], evaluate: Callable[[], float] | None,
         cfg: TrainConfig, desc: str, *, on_epoch: Callable[[dict], bool] | None = None) -> tuple[dict, list[dict]]:
    """Generic loop: AdamW (fused on CUDA) + warm-up + cosine over the step or time budget, bf16
    autocast on CUDA, optional EMA of the weights; keeps the state with the best validation
    metric. Returns that state and a per-epoch log (loss, valid, examples/s, GPU utilisation).

    ``make_batches(epoch)`` returns the epoch's batches (a list, or a sized lazy sequence that
    supports ``[rank::world]``); ``make_batches(-1)`` only sizes an epoch. A time budget
    (``cfg.max_minutes``) is checked after every step, so no epoch can overrun it. ``on_epoch(entry)``
    (optional) sees each epoch's log entry and returns True to stop early (e.g. a successive-halving pruner)."""
    rank, world = _dist()
    dev = torch.device(cfg.device)
    model.to(dev)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    if cfg.compile and dev.type == "cuda":
        net = torch.compile(net, dynamic=True)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2 and "in." not in n]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and not (p.dim() >= 2 and "in." not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, fused=dev.type == "cuda")
    steps_per_epoch = max(1, len(make_batches(-1)) // world)
    total = steps_per_epoch * cfg.epochs
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes else None
    amp = cfg.amp and dev.type == "cuda"
    ema = _Ema(model, cfg.ema) if cfg.ema else None
    best, best_state, bad, log = -1.0, None, 0, []
    t0 = time.time()
    step, stop, f = 0, False, 1.0
    bar = tqdm(total=total, desc=desc, disable=not cfg.progress or rank != 0, unit="step", dynamic_ncols=True)
    for epoch in range(cfg.epochs):
        model.train()
        batches = make_batches(epoch)[rank::world][:steps_per_epoch]
        tot_loss, n_ex, n_b, te = 0.0, 0, 0, time.time()
        for batch in batches:
            f, progress = _lr_factor(step, time.time() - t0, total, cfg.warmup_steps, budget_s)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * f
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss = net(*[b.to(dev, non_blocking=True) for b in batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if ema is not None:
                ema.update()
            step += 1
            n_b += 1
            n_ex += int(batch[0].shape[0])
            tot_loss += loss.detach()
            if n_b % 20 == 0 or n_b == 1:
                bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.3f}", refresh=False)
            bar.update(1)
            if world == 1 and budget_s is not None and progress >= 1.0:
                stop = True
                break
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        secs = max(1e-9, time.time() - te)
        entry = {"epoch": epoch + 1, "step": step, "loss": float(tot_loss) / max(1, n_b), "minutes": (time.time() - t0) / 60,
                 "examples_per_s": n_ex / secs, "lr": cfg.lr * f}
        util = _gpu_util(dev)
        if util is not None:
            entry["gpu_util"] = util
        if rank == 0 and evaluate is not None:
            model.eval()
            if ema is not None:
                ema.swap()
            entry["valid"] = evaluate()
            if entry["valid"] > best:
                best, bad = entry["valid"], 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
            if ema is not None:
                ema.swap()
        log.append(entry)
        if rank == 0 and cfg.progress:
            tqdm.write(f"{desc} epoch {epoch + 1}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()))
        stop = stop or (evaluate is not None and bad >= cfg.patience and world == 1) or (
            budget_s is not None and time.time() - t0 >= budget_s)
        if on_epoch is not None and rank == 0 and not stop and epoch + 1 < cfg.epochs and on_epoch(entry):
            entry["stopped_by"] = "on_epoch"
            stop = True
        if world > 1:  # every rank must agree to stop
            flag = torch.tensor([1.0 if stop else 0.0], device=dev if dev.type == "cuda" else "cpu")
            dist.broadcast(flag, 0)
            stop = bool(flag.item())
        if stop:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    elif ema is not None:
        ema.swap()  # no validation: keep the averaged weights
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

    _, log = fit(model, make_batches, evaluate if users else None, cfg, "rec")
    gm.meta = {"train": asdict(cfg), "n_windows": int(len(windows)), "log": log}
    return gm, log


def _windows(words: list[str], rng: np.random.Generator, lo: int, hi: int) -> str:
    n = int(rng.integers(lo, hi + 1))
    if len(words) <= n:
        return " ".join(words)
    s = int(rng.integers(0, len(words) - n + 1))
    return " ".join(words[s:s + n])


def retrieval_texts(data: RetrievalData) -> tuple[list[list[str]], list[int], list[tuple[str, int]]]:
    """Per document row: its texts (own text first, then ``data.doc_texts``), the own-text index,
    and the training queries as ``(text, doc row)`` (a query counts for its first relevant id)."""
    row = {d.id: i for i, d in enumerate(data.docs)}
    texts = [[d.text, *data.doc_texts.get(d.id, [])] for d in data.docs]
    queries = [(q.text, row[sorted(q.relevant)[0]]) for q in data.train if q.text.strip()]
    return texts, [0] * len(texts), queries


class _Sampled:
    """``steps`` freshly sampled batches (the sampler's stream; slicing by rank is a no-op)."""

    def __init__(self, sampler: WindowSampler | None, codes: torch.Tensor, steps: int):
        self.sampler, self.codes, self.steps = sampler, codes, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, _slice) -> "_Sampled":
        return self

    def __iter__(self):
        for _ in range(self.steps):
            src, rows = self.sampler.sample()
            yield src, self.codes[rows]


def train_retrieval(data: RetrievalData, ids: SemanticIds, mcfg: GRConfig, cfg: TrainConfig, *,
                    vocab_size: int = 8000, sampler: SamplerConfig | None = None, index_windows: int = 2,
                    window_range: tuple[int, int] = (4, 10)) -> tuple[GenerativeModel, list[dict]]:
    """Train text -> doc ID. Validation Recall@10 on ``data.valid``.

    With a ``sampler`` (the default recipe) every step cuts fresh examples from each
    document's texts (:mod:`server.sampling`); ``cfg.epochs x cfg.steps_per_epoch`` steps,
    validated every epoch. ``sampler=None`` is the documented ablation: the fixed training
    queries + whole docs + ``index_windows`` random windows per doc per epoch."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    texts, own, queries = retrieval_texts(data)
    tok = train_tokenizer([t for ts in texts for t in ts] + [q for q, _ in queries], vocab_size=vocab_size)
    mcfg.task, mcfg.levels, mcfg.vocab_size = "retrieval", ids.levels, tok.get_vocab_size()
    model = GenerativeRetriever(mcfg)
    gm = GenerativeModel(model, ids, data.docs, tokenizer=tok)
    if sampler is None:
        make_batches = retrieval_batches(tok, ids, data, mcfg.max_len, cfg.batch_size, cfg.seed, index_windows, window_range)
    else:
        sampler = replace(sampler, max_len=mcfg.max_len)
        make_batches = sampled_batches(tok, ids, data, sampler, cfg)
    valid = data.valid[: cfg.eval_queries] if cfg.eval_queries else []

    def evaluate() -> float:
        ranked = gm.rank_texts([q.text for q in valid], 10, beam=cfg.beam)
        return rank_metrics([[i for i, _ in r] for r in ranked], [q.relevant for q in valid])["recall@10"]

    _, log = fit(model, make_batches, evaluate if valid else None, cfg, "retrieval")
    gm.meta = {"train": asdict(cfg), "vocab_size": tok.get_vocab_size(), "log": log,
               "recipe": {"sampler": sampler.to_dict()} if sampler else {"fixed": {"index_windows": index_windows, "window_range": list(window_range)}}}
    return gm, log


def sampled_batches(tok, ids: SemanticIds, data: RetrievalData, sampler: SamplerConfig, cfg: TrainConfig) -> Callable[[int], "_Sampled"]:
    """``make_batches(epoch)``: ``cfg.steps_per_epoch`` batches cut afresh from ``data``'s texts by ``sampler``
    (:mod:`server.sampling`), each ``(src (B, S) tokens, codes (B, L))``, made on ``cfg.device``."""
    texts, own, queries = retrieval_texts(data)
    corpus = TextCorpus.build(tok, texts, own, queries, max_len=sampler.max_len)
    rank, _ = _dist()
    ws = WindowSampler(corpus, sampler, seed=cfg.seed * 1000 + rank, device=cfg.device)
    rows = torch.as_tensor(np.array([ids.index(d.id) for d in data.docs]))
    codes = torch.as_tensor(ids.codes)[rows].to(cfg.device)  # doc row -> ID codes
    return lambda epoch: _Sampled(ws, codes, cfg.steps_per_epoch)


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
