"""Knowledge distillation: losses (pure functions), :class:`DistillConfig` and the rec trainer :func:`distill`.

* :func:`kd_loss` - Hinton et al.: ``alpha * CE(target, student) + (1 - alpha) * T^2 * KL(p_T || p_S)``,
  both distributions a softmax at temperature ``T``; the ``T^2`` keeps the soft term's gradient
  scale independent of ``T``.
* :func:`listwise_rank_loss` - ListNet: cross-entropy between ``softmax(teacher)`` and
  ``softmax(student)`` over the teacher's top-k candidates, so the student keeps the teacher's
  ranking (for generative retrieval: the beam scores of the same candidate IDs).

* :func:`distill` - trains a fresh (smaller) student recommender from a trained teacher on the
  same history windows as ``train_rec``, through :class:`RecDistiller` (teacher + student in one
  module whose ``forward`` returns the distillation loss, so ``server.train._fit`` runs it).
  Implemented for the rec task only.

Teacher tensors are detached: no gradient flows into the teacher.

>>> s = torch.tensor([[0.0, 0.0]]); t = torch.tensor([[2.0, 0.0]]); y = torch.tensor([0])
>>> round(kd_loss(s, t, y, alpha=1.0).item(), 4)   # plain cross-entropy: log 2
0.6931
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edge_gr.errors import InputError

if TYPE_CHECKING:  # server.train imports the data layer; keep this module light to import
    from server.data.base import RecSplit
    from server.generative import GenerativeModel
    from server.model import GenerativeRetriever, GRConfig
    from server.train import TrainConfig

__all__ = ["kd_loss", "listwise_rank_loss", "DistillConfig", "RecDistiller", "teacher_beams", "distill"]


def _check_common(alpha: float, temperature: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    if not temperature > 0:
        raise InputError(f"temperature must be > 0, got {temperature}")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor | None,
            alpha: float = 0.5, temperature: float = 2.0, *, mask: torch.Tensor | None = None,
            ignore_index: int = -100) -> torch.Tensor:
    """Distillation loss over the last dim, averaged over the kept positions.

    ``student_logits`` / ``teacher_logits`` ``(..., C)``; ``target`` ``(...)`` class ids (may be
    ``None`` when ``alpha == 0``). Positions with ``mask == False`` or ``target == ignore_index``
    are left out of both terms. The hard term uses the student at temperature 1::

        alpha * CE(target, softmax(s)) + (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T))

    >>> s = torch.tensor([[0.0, 0.0]]); t = torch.tensor([[2.0, 0.0]]); y = torch.tensor([0])
    >>> round(kd_loss(s, t, y, alpha=0.0, temperature=1.0).item(), 4)   # KL(p_T || uniform)
    0.3278
    >>> round(kd_loss(s, t, torch.tensor([-100])).item(), 4)   # every position ignored
    0.0
    """
    _check_common(alpha, temperature)
    if student_logits.shape != teacher_logits.shape:
        raise InputError(f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ in shape")
    lead = student_logits.shape[:-1]
    keep = torch.ones(lead, dtype=torch.bool, device=student_logits.device)
    if mask is not None:
        if mask.shape != lead:
            raise InputError(f"mask of shape {tuple(mask.shape)} does not match logits {tuple(student_logits.shape)} (want {tuple(lead)})")
        keep = keep & mask.bool()
    if target is not None:
        if target.shape != lead:
            raise InputError(f"target of shape {tuple(target.shape)} does not match logits {tuple(student_logits.shape)} (want {tuple(lead)})")
        keep = keep & (target != ignore_index)
    elif alpha > 0:
        raise InputError("kd_loss needs a target when alpha > 0", hint="pass the labels, or alpha=0.0 for a pure soft-target loss")
    w = keep.float()
    denom = w.sum().clamp_min(1)
    s = student_logits.float()
    total = s.new_zeros(())
    if alpha > 0:
        safe = torch.where(keep, target, torch.zeros_like(target)).long()
        nll = -F.log_softmax(s, -1).gather(-1, safe[..., None]).squeeze(-1)
        total = total + alpha * (nll * w).sum() / denom
    if alpha < 1:
        T = float(temperature)
        log_p_t = F.log_softmax(teacher_logits.detach().float() / T, -1)
        log_p_s = F.log_softmax(s / T, -1)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
        total = total + (1 - alpha) * T * T * (kl * w).sum() / denom
    return total


def listwise_rank_loss(student_scores: torch.Tensor, teacher_scores: torch.Tensor, temperature: float = 1.0,
                       top_k: int | None = None) -> torch.Tensor:
    """ListNet cross-entropy ``-sum p_T log p_S`` over candidates (last dim), mean over lists.

    ``p_T = softmax(teacher / T)``, ``p_S = softmax(student / T)``, both restricted to the teacher's
    ``top_k`` best candidates (all when ``None``). Minimal - equal to the entropy of ``p_T`` -
    when the student's scores equal the teacher's there (up to a constant shift); a student that
    reverses the order pays more.

    >>> t = torch.tensor([[3.0, 2.0, 1.0]])
    >>> listwise_rank_loss(t, t).item() < listwise_rank_loss(t.flip(-1), t).item()
    True
    """
    _check_common(0.0, temperature)
    if student_scores.shape != teacher_scores.shape or student_scores.dim() == 0:
        raise InputError(f"student scores {tuple(student_scores.shape)} and teacher scores {tuple(teacher_scores.shape)} must have one shape (..., N)")
    s, t = student_scores.float(), teacher_scores.detach().float()
    if top_k is not None:
        if not 1 <= top_k <= t.shape[-1]:
            raise InputError(f"top_k must be in [1, {t.shape[-1]}], got {top_k}")
        idx = t.topk(top_k, dim=-1).indices
        s, t = s.gather(-1, idx), t.gather(-1, idx)
    p_t = F.softmax(t / temperature, -1)
    return -(p_t * F.log_softmax(s / temperature, -1)).sum(-1).mean()


@dataclass
class DistillConfig:
    """Settings of :func:`distill` (issue #3).

    ``alpha``: weight of the hard-label CE in :func:`kd_loss` (1 - alpha on the soft KL term).
    ``temperature``: softmax temperature of the soft term (and of the rank loss).
    ``rank_weight``: weight of :func:`listwise_rank_loss` on the teacher's beam candidates.
    ``hidden_weight``: weight of an MSE between (projected) student and teacher hidden states.
    ``seq_level``: sequence-level KD - also train the student on the teacher's top-1 beam ID (an
    extra hard target, next to the token-level loss on the data).
    ``rank_k`` / ``rank_samples`` / ``rank_batch``: the teacher's top-``rank_k`` beams are decoded
    once, before training, for ``rank_samples`` training histories (seeded sample); each training
    step adds the terms on ``rank_batch`` of them (used when ``seq_level`` or ``rank_weight > 0``).

    >>> DistillConfig(alpha=0.3).temperature
    2.0
    """

    alpha: float = 0.5
    temperature: float = 2.0
    rank_weight: float = 0.0
    hidden_weight: float = 0.0
    seq_level: bool = False
    rank_k: int = 10
    rank_samples: int = 512
    rank_batch: int = 32

    def __post_init__(self):
        _check_common(self.alpha, self.temperature)
        if self.rank_weight < 0 or self.hidden_weight < 0:
            raise InputError(f"rank_weight and hidden_weight must be >= 0, got {self.rank_weight}, {self.hidden_weight}")
        if self.rank_k < 1 or self.rank_samples < 1 or self.rank_batch < 1:
            raise InputError(f"rank_k, rank_samples and rank_batch must be >= 1, got {self.rank_k}, {self.rank_samples}, {self.rank_batch}")

    @property
    def uses_beams(self) -> bool:
        """Whether the teacher's beams are decoded (sequence-level or rank term on)."""
        return self.seq_level or self.rank_weight > 0


def _rec_targets(model: "GenerativeRetriever", seq: torch.Tensor):
    """(src, codes (B, S, L), decoder inputs, visible (S, S), weight (B, S)) as in ``rec_loss``."""
    src, tgt = seq[:, :-1], seq[:, 1:]
    codes = (model.item_codes[tgt] - model.offsets - 1).clamp_min(0)
    S = src.shape[1]
    visible = torch.ones(S, S, dtype=torch.bool, device=seq.device).tril()
    weight = (tgt != 0) & (src != 0)
    return src, codes, model.teacher_inputs(codes), visible, weight


class RecDistiller(nn.Module):
    """Teacher + student; ``forward(seq[, hist, cand, scores])`` returns the distillation loss.

    Per level ``j`` (logits sliced to level ``j``'s codes, as ``level_logprobs`` does)::

        loss = mean_j kd_loss(student_j, teacher_j, codes_j, alpha, T)      # masked like rec_loss
             + hidden_weight * MSE(proj(student states), teacher states)    # final decoder states
             + [seq_level] mean per-level CE of the student on the teacher's top-1 beam ID
             + rank_weight * listwise_rank_loss(student seq log-probs of the k beam IDs, beam scores)

    The teacher is frozen, kept in eval mode and outside the module tree (so ``parameters()``,
    ``state_dict()`` and ``train()`` see only the student and the projection).
    """

    def __init__(self, teacher: "GenerativeRetriever", student: "GenerativeRetriever", cfg: DistillConfig):
        super().__init__()
        if teacher.cfg.task != "rec" or student.cfg.task != "rec":
            raise InputError("RecDistiller distills recommenders only", hint="both models need task='rec'")
        if tuple(teacher.cfg.levels) != tuple(student.cfg.levels) or not torch.equal(teacher.item_codes, student.item_codes):
            raise InputError("teacher and student must share the semantic IDs", hint="build the student with codes=teacher ids")
        self.student, self.cfg = student, cfg
        object.__setattr__(self, "teacher", teacher.eval().requires_grad_(False))
        dt, ds = teacher.cfg.d_model, student.cfg.d_model
        self.proj = nn.Linear(ds, dt) if (cfg.hidden_weight > 0 and ds != dt) else nn.Identity()

    def forward(self, seq: torch.Tensor, hist: torch.Tensor | None = None, cand: torch.Tensor | None = None,
                scores: torch.Tensor | None = None) -> torch.Tensor:
        c, s, t = self.cfg, self.student, self.teacher
        t.eval()
        src, codes, inp, visible, weight = _rec_targets(s, seq)
        mem, pad = s.encode(src)
        hs = s.decode_hidden(mem, pad, inp, visible)  # (B, S, L, d_s)
        logits = s.head(hs)
        t_logits = t_hidden = None
        if c.alpha < 1 or c.hidden_weight > 0:
            with torch.no_grad():
                tm, tp = t.encode(src)
                t_hidden = t.decode_hidden(tm, tp, inp, visible)
                t_logits = t.head(t_hidden)
        L = len(s.cfg.levels)
        loss = logits.new_zeros(())
        for j in range(L):
            o, K = int(s.offsets[j]), s.cfg.levels[j]
            sl = logits[..., j, o:o + K]
            tl = t_logits[..., j, o:o + K] if t_logits is not None else sl.detach()
            loss = loss + kd_loss(sl, tl, codes[..., j], c.alpha, c.temperature, mask=weight)
        loss = loss / L
        if c.hidden_weight > 0:
            w = weight[..., None, None].float()
            se = (self.proj(hs) - t_hidden).pow(2) * w
            loss = loss + c.hidden_weight * se.sum() / (w.sum() * L * t_hidden.shape[-1]).clamp_min(1)
        if hist is not None and c.uses_beams:
            lp = self.candidate_logprobs(hist, cand)  # (N, k, L)
            if c.seq_level:
                loss = loss - lp[:, 0].mean()
            if c.rank_weight > 0:
                loss = loss + c.rank_weight * listwise_rank_loss(lp.sum(-1), scores, c.temperature)
        return loss

    def candidate_logprobs(self, hist: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """Student per-level log-probs (N, k, L) of candidate IDs ``cand`` (N, k, L) after ``hist`` (N, S), teacher-forced."""
        s = self.student
        mem, pad = s.encode(hist)
        logits = s.decode(mem, pad, s.teacher_inputs(cand))  # (N, k, L, V)
        return torch.stack([s.level_logprobs(logits[..., j, :], j).gather(-1, cand[..., j:j + 1]).squeeze(-1)
                            for j in range(cand.shape[-1])], -1)

    def rank_loss(self, hist: torch.Tensor, cand: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The listwise rank term alone (no weight): student sequence log-probs vs teacher beam scores."""
        return listwise_rank_loss(self.candidate_logprobs(hist, cand).sum(-1), scores, self.cfg.temperature)


def teacher_beams(teacher: "GenerativeModel", histories: list[list[str]], k: int, beam: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher's top-``k`` IDs for each history: (hist (N, max_len) item rows, codes (N, k, L), scores (N, k)).

    Histories for which the beam returns fewer than ``k`` IDs (or none: popularity fallback) are dropped.
    """
    ranked = teacher.rank(histories, k, beam=max(beam or k, k))
    keep = [r for r, out in enumerate(ranked) if len(out) == k and not any(np.isnan(sc) for _, sc in out)]
    hist = teacher._history_tensor([histories[r] for r in keep])
    rows = np.array([[teacher.ids.index(i) for i, _ in ranked[r]] for r in keep], dtype=np.int64).reshape(-1, k)
    codes = torch.from_numpy(teacher.ids.codes[rows].astype(np.int64))
    scores = torch.tensor([[sc for _, sc in ranked[r]] for r in keep], dtype=torch.float32).reshape(-1, k)
    return hist, codes, scores


def distill(teacher: "GenerativeModel", student_cfg: "GRConfig", split: "RecSplit", cfg: DistillConfig,
            train_cfg: "TrainConfig") -> "GenerativeModel":
    """Train a fresh student recommender (``student_cfg``: any width / depth) from ``teacher``.

    Same semantic IDs, windows, optimiser, schedule, validation (NDCG@10 on ``valid_target``) and
    early stopping as ``train_rec``; the loss is :class:`RecDistiller`'s. Returns the student as a
    :class:`GenerativeModel` (teacher's catalogue and popularity fallback); ``meta["log"]`` holds
    the per-epoch log.

    >>> gm = distill(teacher, GRConfig(d_model=128, n_enc_layers=2, n_dec_layers=2), split,
    ...              DistillConfig(alpha=0.5, rank_weight=0.5), TrainConfig(epochs=5))   # doctest: +SKIP
    """
    from server.generative import GenerativeModel
    from server.metrics import rank_metrics
    from server.model import GenerativeRetriever
    from server.train import _fit, rec_windows, seed_everything

    if teacher.task != "rec":
        raise InputError("distill() handles recommenders only", hint="pass a rec teacher (train_rec)")
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    seed_everything(train_cfg.seed)
    ids = teacher.ids
    scfg = copy.deepcopy(student_cfg)
    scfg.task, scfg.n_items, scfg.levels = "rec", len(ids), tuple(ids.levels)
    student = GenerativeRetriever(scfg, codes=torch.from_numpy(ids.codes))
    t_model = teacher.model.to(train_cfg.device)
    net = RecDistiller(t_model, student, cfg)
    row = {it: i + 1 for i, it in enumerate(ids.items)}
    hist = [[row[i] for i in h if i in row] for h in split.train.values()]
    windows = rec_windows(hist, scfg.max_len)
    users = [u for u in split.train if split.train[u]]
    beams = None
    if cfg.uses_beams:
        pick = np.random.default_rng(train_cfg.seed + 1).choice(len(users), min(cfg.rank_samples, len(users)), replace=False)
        b_hist = [split.train[users[i]] for i in sorted(pick)]
        beams = teacher_beams(teacher, b_hist, min(cfg.rank_k, len(ids)), max(train_cfg.beam, cfg.rank_k))
        if len(beams[0]) == 0:
            beams = None
    # the teacher's history tensor uses its max_len; the student's encoder needs at most its own
    if beams is not None:
        beams = (beams[0][:, -scfg.max_len:],) + beams[1:]

    def make_batches(epoch: int) -> list:
        order = np.random.default_rng(train_cfg.seed + max(epoch, 0)).permutation(len(windows))
        out = [(torch.from_numpy(windows[order[s:s + train_cfg.batch_size]]),) for s in range(0, len(order), train_cfg.batch_size)]
        if beams is not None:
            border = np.random.default_rng(train_cfg.seed * 7919 + max(epoch, 0)).permutation(len(beams[0]))
            n = len(border)
            for i, b in enumerate(out):
                sel = torch.from_numpy(border[[(i * cfg.rank_batch + j) % n for j in range(min(cfg.rank_batch, n))]])
                out[i] = b + tuple(x[sel] for x in beams)
        return out

    gm = GenerativeModel(student, ids, teacher.items, popularity=list(teacher.popularity))
    eval_users = sorted(np.random.default_rng(train_cfg.seed).choice(users, min(train_cfg.eval_queries, len(users)), replace=False).tolist()) if train_cfg.eval_queries else []

    def evaluate() -> float:
        ranked = gm.rank([split.train[u] for u in eval_users], 10, beam=train_cfg.beam)
        return rank_metrics([[i for i, _ in r] for r in ranked], [{split.valid_target[u]} for u in eval_users])["ndcg@10"]

    _, log = _fit(net, make_batches, evaluate if eval_users else None, train_cfg, "distill")
    gm.model = student.eval()
    gm.meta = {"train": asdict(train_cfg), "distill": asdict(cfg), "teacher_params": t_model.n_params(),
               "n_windows": int(len(windows)), "n_beam_histories": 0 if beams is None else int(len(beams[0])), "log": log}
    return gm
