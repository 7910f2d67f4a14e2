"""Updates without full retraining: fine-tuning with experience replay, EWC and LoRA, and the stream pipeline.

* **Replay** (:class:`ReplayBuffer`): a reservoir sample of old training examples (rec
  windows, retrieval pseudo-queries) mixed into every update batch.
* **EWC** (:func:`fisher_diagonal`, :func:`ewc_penalty`):
  ``L = L_new + lambda * sum_i F_i (theta_i - theta*_i)^2`` with the diagonal empirical
  Fisher ``F`` of the old data at the old weights ``theta*`` (normalised to mean 1, so
  ``lambda`` does not depend on the model's size). Rows added for new items are free.
* **LoRA** (:func:`add_lora`, :func:`lora_factors`, :func:`merge_lora_state`): peft's
  ``inject_adapter_in_model`` on the model's Linear layers (base weights frozen);
  after training the factors are merged with :func:`edge_gr.delta.merge_lora`, the same
  float64 merge the registry and the device use, so the published delta (only the
  factors and the new rows) rebuilds the trained model bit for bit.
* **New items** (:func:`grow_rec_model`): the per-item input rows and the item -> code
  table of a recommender get one appended row per new item; old rows never change
  (gradients to them are masked), so the delta stores only the new rows.
* **Stream** (:class:`StreamPipeline`): buffer -> batch -> fine-tune -> validate -> publish.

>>> buf = ReplayBuffer(capacity=3, seed=0)
>>> buf.extend(range(10)); len(buf), buf.seen
(3, 10)
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Generic, Iterable, Sequence, TypeVar

import numpy as np
import torch

from edge_gr.delta import merge_lora
from edge_gr.errors import InputError
from edge_gr.ids import SemanticIds

from .data.base import Item
from .generative import GenerativeModel
from .model import GenerativeRetriever

__all__ = ["ReplayBuffer", "UpdateConfig", "fisher_diagonal", "ewc_penalty", "add_lora", "lora_factors", "merge_lora_state",
           "grow_rec_model", "finetune", "update_model", "StreamPipeline", "METHODS", "LORA_TARGETS"]

T = TypeVar("T")
METHODS = ("naive", "replay", "ewc", "replay+ewc", "lora")
LORA_TARGETS = ("q", "kv", "o", "net.0", "net.2", "head")  # every Linear of GenerativeRetriever


class ReplayBuffer(Generic[T]):
    """Reservoir sample of at most ``capacity`` examples from everything offered (uniform over the stream)."""

    def __init__(self, capacity: int, seed: int = 0):
        if capacity < 1:
            raise InputError(f"capacity is {capacity}", hint="give the replay buffer room for at least one example")
        self.capacity, self.items, self.seen = capacity, [], 0
        self._rng = np.random.default_rng(seed)

    def extend(self, examples: Iterable[T]) -> None:
        for x in examples:
            self.seen += 1
            if len(self.items) < self.capacity:
                self.items.append(x)
            else:
                j = int(self._rng.integers(0, self.seen))
                if j < self.capacity:
                    self.items[j] = x

    def sample(self, n: int) -> list[T]:
        if not self.items or n <= 0:
            return []
        idx = self._rng.choice(len(self.items), size=min(n, len(self.items)), replace=False)
        return [self.items[i] for i in idx]

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class UpdateConfig:
    method: str = "replay"        # naive | replay | ewc | replay+ewc | lora (LoRA adapters + replay)
    epochs: int = 3               # passes over the new examples (+ their replay share)
    lr: float = 1e-3
    batch_size: int = 64
    replay_ratio: float = 1.0     # old examples per new example in every epoch (replay, replay+ewc, lora)
    ewc_lambda: float = 10.0      # weight of the EWC penalty (Fisher normalised to mean 1)
    fisher_batches: int = 20      # batches of old data for the Fisher estimate
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = LORA_TARGETS
    seed: int = 0
    threads: int | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"unknown update method {self.method!r}", hint=f"use one of {METHODS}")

    @property
    def uses_replay(self) -> bool:
        return self.method in ("replay", "replay+ewc", "lora")

    @property
    def uses_ewc(self) -> bool:
        return self.method in ("ewc", "replay+ewc")


# -- EWC -----------------------------------------------------------------------------------
def fisher_diagonal(model: GenerativeRetriever, batches: Sequence[tuple[torch.Tensor, ...]]) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: mean over ``batches`` of the squared gradient of the loss, normalised to mean 1."""
    was = model.training
    model.eval()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    F = {n: torch.zeros_like(p) for n, p in params.items()}
    for batch in batches:
        model.zero_grad(set_to_none=True)
        model(*batch).backward()
        for n, p in params.items():
            if p.grad is not None:
                F[n] += p.grad.detach() ** 2
    model.zero_grad(set_to_none=True)
    model.train(was)
    total = sum(f.sum() for f in F.values())
    count = sum(f.numel() for f in F.values())
    scale = count / total.clamp_min(1e-30)
    return {n: f * scale for n, f in F.items()}


def ewc_penalty(model: torch.nn.Module, fisher: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    """``sum_i F_i (theta_i - theta*_i)^2`` over the parameters in ``fisher``; rows beyond the anchor's (new items) are free."""
    total = torch.zeros(())
    for n, p in model.named_parameters():
        if n in fisher:
            a, f = anchor[n], fisher[n]
            cur = p[: a.shape[0]] if p.shape != a.shape else p
            total = total + (f * (cur - a) ** 2).sum()
    return total


# -- LoRA ----------------------------------------------------------------------------------
def add_lora(model: GenerativeRetriever, r: int = 8, alpha: float = 16.0, targets: Sequence[str] = LORA_TARGETS) -> GenerativeRetriever:
    """Inject LoRA adapters (peft) into the Linear layers named ``targets``; everything else is frozen."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as e:
        raise ImportError("LoRA updates need peft: `pip install peft==0.21.2`") from e
    return inject_adapter_in_model(LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets), bias="none"), model)


def lora_factors(model: torch.nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """``{base weight name (as in the un-adapted model): (A (r, in), B (out, r), scale)}`` of every LoRA layer."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, LoraLayer) and "default" in mod.lora_A:
            A = mod.lora_A["default"].weight.detach().cpu().float().numpy()
            B = mod.lora_B["default"].weight.detach().cpu().float().numpy()
            out[f"{name}.weight"] = (np.ascontiguousarray(A), np.ascontiguousarray(B), float(mod.scaling["default"]))
    return out


def _strip_lora(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A peft-injected state dict -> the plain model's names (base_layer weights, no adapters)."""
    return {k.replace(".base_layer.", "."): v for k, v in sd.items() if ".lora_" not in k}


def merge_lora_state(base: dict[str, np.ndarray], factors: dict[str, tuple[np.ndarray, np.ndarray, float]]) -> dict[str, np.ndarray]:
    """``base`` with every factor merged (the exact function the registry and the device apply)."""
    out = dict(base)
    for name, (A, B, s) in factors.items():
        out[name] = merge_lora(base[name], A, B, s)
    return out


# -- new items -------------------------------------------------------------------------
def grow_rec_model(gm: GenerativeModel, new_ids: SemanticIds, new_items: Sequence[Item]) -> GenerativeModel:
    """A recommender for ``new_ids`` (the old IDs + appended new items): item rows appended, old ones unchanged.

    A new item's input row starts as the mean of the old items' rows that share its code prefix
    (else of all rows), so it begins close to its semantic neighbours.
    """
    old = gm.ids
    n_old = len(old)
    if new_ids.items[:n_old] != old.items or not (new_ids.codes[:n_old] == old.codes).all() or new_ids.levels != old.levels:
        raise InputError("the new IDs must extend the old ones (same items and codes first, same levels)",
                         hint="build them with server.incremental_ids.assign_new_ids")
    cfg = copy.deepcopy(gm.model.cfg)
    cfg.n_items = len(new_ids)
    model = GenerativeRetriever(cfg, codes=torch.from_numpy(new_ids.codes))
    sd = gm.model.state_dict()
    new_sd = model.state_dict()
    for k, v in sd.items():
        if k == "item_codes":
            continue
        if k == "item_in.weight":
            rows = [v]
            for i in range(n_old, len(new_ids)):
                same = np.flatnonzero((old.codes[:, :-1] == new_ids.codes[i, :-1]).all(1))
                src = v[torch.from_numpy(same + 1)] if len(same) else v[1:]
                rows.append(src.mean(0, keepdim=True))
            new_sd[k] = torch.cat(rows)
        else:
            new_sd[k] = v
    model.load_state_dict(new_sd)
    return GenerativeModel(model, new_ids, list(gm.items) + list(new_items), gm.tokenizer, gm.popularity, dict(gm.meta))


# -- training --------------------------------------------------------------------------
def finetune(model: torch.nn.Module, batches: Callable[[int], list], cfg: UpdateConfig, *,
             penalty: Callable[[], torch.Tensor] | None = None, frozen_rows: dict[str, int] | None = None) -> dict:
    """Adam (no weight decay) over the trainable parameters for ``cfg.epochs`` epochs of ``batches(epoch)``.

    ``frozen_rows`` maps a parameter name to a row count whose gradients are zeroed (old
    items' rows stay bit-identical). Returns ``{"steps", "loss", "seconds"}``.
    """
    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    named = dict(model.named_parameters())
    hooks = []
    for n, k in (frozen_rows or {}).items():
        def mask(g, k=k):
            g = g.clone()
            g[:k] = 0
            return g
        hooks.append(named[n].register_hook(mask))
    model.train()
    steps, last = 0, float("nan")
    try:
        for epoch in range(cfg.epochs):
            for batch in batches(epoch):
                loss = model(*batch)
                if penalty is not None:
                    loss = loss + penalty()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                steps += 1
                last = float(loss.item())
    finally:
        for h in hooks:
            h.remove()
    model.eval()
    return {"steps": steps, "loss": last, "seconds": time.perf_counter() - t0}


def update_model(gm: GenerativeModel, new_batches: Callable[[int], list], cfg: UpdateConfig, *,
                 replay_batches: Callable[[int], list] | None = None, old_batches: Sequence | None = None,
                 n_old_items: int | None = None) -> tuple[GenerativeModel, dict]:
    """Fine-tune ``gm`` (already grown for the new items) on the new data with ``cfg.method``.

    ``new_batches(epoch)`` / ``replay_batches(epoch)`` give the epoch's batches of new / old
    examples (interleaved when replay is on); ``old_batches`` feed the Fisher estimate (EWC);
    ``n_old_items`` freezes the old rows of the per-item input table (rec). Returns the
    updated model (LoRA merged) and ``info`` with ``seconds`` (everything, Fisher included),
    ``steps`` and, for LoRA, ``lora`` = the factors to publish.
    """
    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = copy.deepcopy(gm.model)
    info: dict = {"method": cfg.method}
    if cfg.uses_replay and replay_batches is None:
        raise InputError(f"method {cfg.method} needs replay_batches", hint="pass a function giving batches of old examples")

    def batches(epoch: int) -> list:
        new = new_batches(epoch)
        if not cfg.uses_replay:
            return new
        old = replay_batches(epoch)
        merged = list(new) + list(old)
        order = np.random.default_rng(cfg.seed * 7919 + epoch).permutation(len(merged))
        return [merged[i] for i in order]

    penalty = None
    if cfg.uses_ewc:
        if not old_batches:
            raise InputError("EWC needs old_batches for the Fisher estimate", hint="pass a few batches of old training examples")
        anchor_model = gm.model
        fisher = fisher_diagonal(anchor_model, list(old_batches)[: cfg.fisher_batches])
        anchor = {n: p.detach().clone() for n, p in anchor_model.named_parameters()}
        penalty = lambda: cfg.ewc_lambda * ewc_penalty(model, fisher, anchor) / max(1, len(fisher))  # noqa: E731
    frozen = {"item_in.weight": n_old_items + 1} if n_old_items is not None and getattr(model, "item_in", None) is not None else None
    if cfg.method == "lora":
        base_sd = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
        model = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_targets)
        if frozen:  # the new items' input rows train too (the only full-rank change)
            model.item_in.weight.requires_grad_(True)
        info.update(finetune(model, batches, cfg, frozen_rows=frozen))
        factors = lora_factors(model)
        merged = merge_lora_state({k: v for k, v in base_sd.items()}, factors)
        plain = _strip_lora(model.state_dict())
        for k, v in plain.items():  # trained full-rank tensors (new item rows) come from the model
            if k not in factors:
                merged[k] = v.detach().cpu().numpy()
        model = copy.deepcopy(gm.model)
        model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in merged.items()})
        info["lora"] = factors
        info["lora_params"] = int(sum(A.size + B.size for A, B, _ in factors.values()))
    else:
        info.update(finetune(model, batches, cfg, penalty=penalty, frozen_rows=frozen))
    info["seconds"] = time.perf_counter() - t0
    model.eval()
    return GenerativeModel(model, gm.ids, gm.items, gm.tokenizer, gm.popularity, dict(gm.meta)), info


# -- the stream -------------------------------------------------------------------------
@dataclass
class StreamPipeline(Generic[T]):
    """buffer -> batch -> fine-tune -> validate -> publish.

    ``push`` buffers arriving items; every ``batch_size`` of them runs
    ``update(batch) -> candidate``, then ``validate(candidate) -> metrics``; if
    ``accept(metrics)`` the candidate is published (``publish(candidate, metrics)``), else
    it is dropped and the batch is kept for the next try (``rejected`` counts them).

    >>> out = []
    >>> p = StreamPipeline(2, update=lambda b: sum(b), validate=lambda c: {"ok": c < 10}, accept=lambda m: m["ok"],
    ...                    publish=lambda c, m: out.append(c))
    >>> for x in [1, 2, 3, 4, 5, 6]: p.push([x])
    >>> out, p.rejected, p.pending
    ([3, 7], 1, [5, 6])
    """

    batch_size: int
    update: Callable[[list], object]
    validate: Callable[[object], dict]
    accept: Callable[[dict], bool]
    publish: Callable[[object, dict], None]
    pending: list = field(default_factory=list)
    published: int = 0
    rejected: int = 0
    log: list = field(default_factory=list)

    def push(self, items: Iterable) -> None:
        self.pending.extend(items)
        while len(self.pending) >= self.batch_size and self._run(self.pending[: self.batch_size]):
            del self.pending[: self.batch_size]

    def flush(self) -> None:
        if self.pending and self._run(list(self.pending)):
            self.pending.clear()

    def _run(self, batch: list) -> bool:
        cand = self.update(batch)
        metrics = self.validate(cand)
        ok = bool(self.accept(metrics))
        self.log.append({"n": len(batch), "metrics": metrics, "published": ok})
        if ok:
            self.publish(cand, metrics)
            self.published += 1
        else:
            self.rejected += 1
        return ok
