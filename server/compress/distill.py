"""Knowledge distillation: losses (pure functions), :class:`DistillConfig` and the rec trainer :func:`distill`.

* :func:`kd_loss` - Hinton et al.: ``alpha * CE(target, student) + (1 - alpha) * T^2 * KL(p_T || p_S)``,
  both distributions a softmax at temperature ``T``; the ``T^2`` keeps the soft term's gradient
  scale independent of ``T``.
* :func:`listwise_rank_loss` - ListNet: cross-entropy between ``softmax(teacher)`` and
  ``softmax(student)`` over the teacher's top-k candidates, so the student keeps the teacher's
  ranking (for generative retrieval: the beam scores of the same candidate IDs).

* :func:`hard_negative_loss` - the true ID against the teacher's top beams that are not it.
* :func:`distill` - trains a student (fresh and smaller, or a pruned / grouped copy being
  recovered) from a trained teacher on the teacher's own batches (rec history windows or
  retrieval queries + doc texts), through :class:`Distiller` (teacher + student in one module
  whose ``forward`` returns the distillation loss, so ``server.train.fit`` runs it).

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
    from server.sampling import SamplerConfig
    from server.train import TrainConfig

__all__ = ["kd_loss", "listwise_rank_loss", "hard_negative_loss", "DistillConfig", "Distiller", "RecDistiller", "teacher_beams", "student_model", "distill"]


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
    ``negative_weight``: weight of :func:`hard_negative_loss` - the true ID against the teacher's top
    beams that are not it (teacher-mined hard negatives); ``negative_skip`` leaves the teacher's first
    beams out of the negatives (in recommendation they are mostly plausible items: false negatives).
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
    negative_weight: float = 0.0
    negative_skip: int = 0
    rank_k: int = 10
    rank_samples: int = 512
    rank_batch: int = 32

    def __post_init__(self):
        _check_common(self.alpha, self.temperature)
        if min(self.rank_weight, self.hidden_weight, self.negative_weight) < 0:
            raise InputError(f"rank_weight, hidden_weight and negative_weight must be >= 0, got "
                             f"{self.rank_weight}, {self.hidden_weight}, {self.negative_weight}")
        if self.negative_skip < 0 or (self.negative_weight > 0 and self.negative_skip >= self.rank_k):
            raise InputError(f"negative_skip ({self.negative_skip}) must be in [0, rank_k={self.rank_k})",
                             hint="raise rank_k to mine negatives further down the teacher's list")
        if self.rank_k < 1 or self.rank_samples < 1 or self.rank_batch < 1:
            raise InputError(f"rank_k, rank_samples and rank_batch must be >= 1, got {self.rank_k}, {self.rank_samples}, {self.rank_batch}")

    @property
    def uses_beams(self) -> bool:
        """Whether the teacher's beams are decoded (sequence-level or rank term on)."""
        return self.seq_level or self.rank_weight > 0 or self.negative_weight > 0


def _targets(model: "GenerativeRetriever", batch: tuple[torch.Tensor, ...]):
    """(src, codes (B, T, L), decoder inputs (B, T, L), visible (T, S) | None, weight (B, T)) of a training batch.

    rec ``(seq,)``: every history position predicts the next item (as ``rec_loss``);
    retrieval ``(src, codes)``: one target per query (T = 1).
    """
    if model.cfg.task == "rec":
        (seq,) = batch
        src, tgt = seq[:, :-1], seq[:, 1:]
        codes = (model.item_codes[tgt] - model.offsets - 1).clamp_min(0)
        S = src.shape[1]
        visible = torch.ones(S, S, dtype=torch.bool, device=seq.device).tril()
        weight = (tgt != 0) & (src != 0)
        return src, codes, model.teacher_inputs(codes), visible, weight
    src, codes = batch
    codes = codes[:, None]
    return src, codes, model.teacher_inputs(codes), None, torch.ones(codes.shape[:2], dtype=torch.bool, device=src.device)


class Distiller(nn.Module):
    """Teacher + student; ``forward(*batch[, b_src, cand, scores, target])`` returns the distillation loss.

    ``batch`` is the task's training batch (rec ``(seq,)``, retrieval ``(src, codes)``); the optional
    tail is a sample of the teacher's beams (:func:`teacher_beams`). Per level ``j`` (logits sliced
    to level ``j``'s codes, as ``level_logprobs`` does)::

        loss = mean_j kd_loss(student_j, teacher_j, codes_j, alpha, T)      # masked like rec_loss
             + hidden_weight * MSE(proj(student states), teacher states)    # final decoder states
             + [seq_level] student NLL of the teacher's top-1 beam ID        # sequence-level KD
             + rank_weight * listwise_rank_loss(student seq log-probs of the k beam IDs, beam scores)
             + negative_weight * CE(true ID vs the teacher's top beams that are not it)  # hard negatives

    The teacher is frozen, kept in eval mode and outside the module tree (so ``parameters()``,
    ``state_dict()`` and ``train()`` see only the student and the projection).
    """

    def __init__(self, teacher: "GenerativeRetriever", student: "GenerativeRetriever", cfg: DistillConfig):
        super().__init__()
        if teacher.cfg.task != student.cfg.task:
            raise InputError(f"teacher is a {teacher.cfg.task} model, student a {student.cfg.task} model",
                             hint="distill a student of the teacher's task")
        if tuple(teacher.cfg.levels) != tuple(student.cfg.levels) or (
                teacher.cfg.task == "rec" and not torch.equal(teacher.item_codes.cpu(), student.item_codes.cpu())):
            raise InputError("teacher and student must share the semantic IDs", hint="build the student with codes=teacher ids")
        self.student, self.cfg = student, cfg
        object.__setattr__(self, "teacher", teacher.eval().requires_grad_(False))
        dt, ds = teacher.cfg.d_model, student.cfg.d_model
        self.proj = nn.Linear(ds, dt) if (cfg.hidden_weight > 0 and ds != dt) else nn.Identity()

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        c, s, t = self.cfg, self.student, self.teacher
        t.eval()
        n_main = 1 if s.cfg.task == "rec" else 2
        main, beams = batch[:n_main], batch[n_main:]
        src, codes, inp, visible, weight = _targets(s, main)
        mem, pad = s.encode(src)
        hs = s.decode_hidden(mem, pad, inp, visible)  # (B, T, L, d_s)
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
        if beams and c.uses_beams:
            b_src, cand, scores, target = beams
            loss = loss + self.beam_terms(b_src, cand, scores, target)
        return loss

    def beam_terms(self, b_src: torch.Tensor, cand: torch.Tensor, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sequence-level, rank and hard-negative terms on teacher beams ``cand`` (N, k, L) for inputs ``b_src``."""
        c = self.cfg
        both = torch.cat([cand, target[:, None]], 1)  # score the true ID in the same pass
        lp = self.candidate_logprobs(b_src, both)  # (N, k+1, L)
        seq = lp.sum(-1)
        loss = seq.new_zeros(())
        if c.seq_level:
            loss = loss - lp[:, 0].mean()
        if c.rank_weight > 0:
            loss = loss + c.rank_weight * listwise_rank_loss(seq[:, :-1], scores, c.temperature)
        if c.negative_weight > 0:
            k0 = c.negative_skip
            loss = loss + c.negative_weight * hard_negative_loss(seq[:, -1], seq[:, k0:-1], (cand[:, k0:] == target[:, None]).all(-1))
        return loss

    def candidate_logprobs(self, src: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """Student per-level log-probs (N, k, L) of candidate IDs ``cand`` (N, k, L) given inputs ``src`` (N, S), teacher-forced."""
        s = self.student
        mem, pad = s.encode(src)
        logits = s.decode(mem, pad, s.teacher_inputs(cand))  # (N, k, L, V)
        return torch.stack([s.level_logprobs(logits[..., j, :], j).gather(-1, cand[..., j:j + 1]).squeeze(-1)
                            for j in range(cand.shape[-1])], -1)

    def rank_loss(self, src: torch.Tensor, cand: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The listwise rank term alone (no weight): student sequence log-probs vs teacher beam scores."""
        return listwise_rank_loss(self.candidate_logprobs(src, cand).sum(-1), scores, self.cfg.temperature)


RecDistiller = Distiller  # the name of the first, rec-only version


def hard_negative_loss(pos: torch.Tensor, neg: torch.Tensor, is_pos: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax cross-entropy of the true ID against teacher-mined hard negatives.

    ``pos`` (N,) student scores of the true IDs, ``neg`` (N, k) scores of the teacher's top beams;
    beams equal to the true ID (``is_pos`` (N, k) True) are not negatives.

    >>> round(hard_negative_loss(torch.tensor([0.0]), torch.tensor([[0.0]])).item(), 4)   # log 2
    0.6931
    """
    if is_pos is not None:
        neg = neg.masked_fill(is_pos, float("-inf"))
    logits = torch.cat([pos[:, None], neg], 1)
    return (torch.logsumexp(logits, 1) - pos).mean()


def teacher_beams(teacher: "GenerativeModel", inputs: list, k: int, beam: int | None = None, targets: list[str] | None = None
                  ) -> tuple[torch.Tensor, ...]:
    """The teacher's top-``k`` IDs for each input (rec: a history of item ids; retrieval: a query text).

    Returns ``(src (N, S) model inputs, codes (N, k, L), scores (N, k))`` and, with ``targets`` (the
    true item / doc id of each input), ``target codes (N, L)`` as a fourth tensor. Inputs for which
    the beam returns fewer than ``k`` IDs (or none: popularity fallback) are dropped.
    """
    from server.text import encode

    if teacher.task == "rec":
        ranked = teacher.rank(inputs, k, beam=max(beam or k, k))
    else:
        ranked = teacher.rank_texts(inputs, k, beam=max(beam or k, k))
    keep = [r for r, out in enumerate(ranked) if len(out) == k and not any(np.isnan(sc) for _, sc in out)]
    if teacher.task == "rec":
        src = teacher._history_tensor([inputs[r] for r in keep])
    else:
        src = torch.from_numpy(encode(teacher.tokenizer, [inputs[r] for r in keep], teacher.model.cfg.max_len))
    rows = np.array([[teacher.ids.index(i) for i, _ in ranked[r]] for r in keep], dtype=np.int64).reshape(-1, k)
    codes = torch.from_numpy(teacher.ids.codes[rows].astype(np.int64))
    scores = torch.tensor([[sc for _, sc in ranked[r]] for r in keep], dtype=torch.float32).reshape(-1, k)
    if targets is None:
        return src, codes, scores
    tgt = torch.from_numpy(teacher.ids.codes[[teacher.ids.index(targets[r]) for r in keep]].astype(np.int64)).reshape(-1, codes.shape[-1])
    return src, codes, scores, tgt


def _attach_beams(make_batches, beams, cfg: DistillConfig, seed: int):
    """Append ``rank_batch`` rows of the teacher's beams to every batch of ``make_batches``."""
    if beams is None:
        return make_batches

    def with_beams(epoch: int) -> list:
        out = make_batches(epoch)
        order = np.random.default_rng(seed * 7919 + max(epoch, 0)).permutation(len(beams[0]))
        n = len(order)
        for i, b in enumerate(out):
            sel = torch.from_numpy(order[[(i * cfg.rank_batch + j) % n for j in range(min(cfg.rank_batch, n))]])
            out[i] = b + tuple(x[sel] for x in beams)
        return out

    return with_beams


def student_model(teacher: "GenerativeModel", student: "GRConfig") -> "GenerativeRetriever":
    """A fresh (untrained) student of ``student``'s shape on the teacher's IDs, items and tokenizer
    (retrieval students read the teacher's text length; a rec student may read a shorter history)."""
    from server.model import GenerativeRetriever

    scfg = copy.deepcopy(student)
    scfg.task, scfg.levels = teacher.task, tuple(teacher.ids.levels)
    if teacher.task == "rec":
        scfg.n_items = len(teacher.ids)
        scfg.max_len = min(scfg.max_len, teacher.model.cfg.max_len)
        return GenerativeRetriever(scfg, codes=torch.from_numpy(teacher.ids.codes))
    scfg.vocab_size = teacher.tokenizer.get_vocab_size()
    scfg.max_len = teacher.model.cfg.max_len
    return GenerativeRetriever(scfg)


def distill(teacher: "GenerativeModel", student: "GRConfig | GenerativeRetriever", data: "RecSplit | RetrievalData",
            cfg: DistillConfig, train_cfg: "TrainConfig", *, sampler: "SamplerConfig | None" = None,
            on_epoch=None) -> "GenerativeModel":
    """Train a student from ``teacher`` (either task) and return it as a :class:`GenerativeModel`.

    ``student``: a :class:`GRConfig` (a fresh model of any width / depth is built with the teacher's
    semantic IDs and tokenizer) or an existing :class:`GenerativeRetriever` to continue from (a
    pruned or grouped copy of the teacher: recovery distillation). ``data``: the
    :class:`RecSplit` (rec) or :class:`RetrievalData` (retrieval) the teacher was trained on.
    Same batches, optimiser, schedule, validation (rec NDCG@10 on ``valid_target``, retrieval
    Recall@10 on ``valid``) and early stopping as ``train_rec`` / ``train_retrieval``; the loss is
    :class:`Distiller`'s. ``meta["log"]`` holds the per-epoch log. Retrieval with a ``sampler``:
    the batches are cut afresh every step as in ``train_retrieval`` (``train_cfg.steps_per_epoch`` per epoch).
    ``on_epoch(entry) -> bool`` (optional) stops training early (:func:`server.train.fit`; the NAS's
    successive halving).

    >>> gm = distill(teacher, GRConfig(d_model=128, n_enc_layers=2, n_dec_layers=2), split,
    ...              DistillConfig(alpha=0.5, rank_weight=0.5), TrainConfig(epochs=5))   # doctest: +SKIP
    """
    from server.generative import GenerativeModel
    from server.metrics import rank_metrics
    from server.model import GenerativeRetriever
    from server.train import fit, rec_windows, retrieval_batches, sampled_batches, seed_everything

    task = teacher.task
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    seed_everything(train_cfg.seed)
    ids = teacher.ids
    if isinstance(student, GenerativeRetriever):
        model = student
        if model.cfg.task != task:
            raise InputError(f"student is a {model.cfg.task} model, teacher a {task} model", hint="pass a student of the teacher's task")
    else:
        model = student_model(teacher, student)
    scfg = model.cfg
    t_model = teacher.model.to(train_cfg.device)
    net = Distiller(t_model, model, cfg)
    rng = np.random.default_rng(train_cfg.seed + 1)
    beams = None
    if task == "rec":
        row = {it: i + 1 for i, it in enumerate(ids.items)}
        windows = rec_windows([[row[i] for i in h if i in row] for h in data.train.values()], scfg.max_len)

        def make_batches(epoch: int) -> list:
            order = np.random.default_rng(train_cfg.seed + max(epoch, 0)).permutation(len(windows))
            return [(torch.from_numpy(windows[order[s:s + train_cfg.batch_size]]),) for s in range(0, len(order), train_cfg.batch_size)]

        users = [u for u in data.train if len(data.train[u]) >= 2]
        if cfg.uses_beams and users:
            pick = sorted(rng.choice(len(users), min(cfg.rank_samples, len(users)), replace=False))
            # history minus its last item -> the teacher's beams; the last item is the true next item
            beams = teacher_beams(teacher, [data.train[users[i]][:-1] for i in pick], min(cfg.rank_k, len(ids)),
                                  max(train_cfg.beam, cfg.rank_k), targets=[data.train[users[i]][-1] for i in pick])
            beams = (beams[0][:, -scfg.max_len:],) + beams[1:]  # the student's encoder needs at most its own max_len
        n_examples = len(windows)
        pool = [u for u in data.train if data.train[u]]
        eval_users = sorted(np.random.default_rng(train_cfg.seed).choice(
            pool, min(train_cfg.eval_queries, len(pool)), replace=False).tolist()) if train_cfg.eval_queries else []

        def evaluate() -> float:
            ranked = gm.rank([data.train[u] for u in eval_users], 10, beam=train_cfg.beam)
            return rank_metrics([[i for i, _ in r] for r in ranked], [{data.valid_target[u]} for u in eval_users])["ndcg@10"]
        has_eval = bool(eval_users)
    else:
        if sampler is not None:
            from dataclasses import replace

            sampler = replace(sampler, max_len=scfg.max_len)
            make_batches = sampled_batches(teacher.tokenizer, ids, data, sampler, train_cfg)
            n_examples = train_cfg.steps_per_epoch * sampler.batch_size
        else:
            make_batches = retrieval_batches(teacher.tokenizer, ids, data, scfg.max_len, train_cfg.batch_size, train_cfg.seed)
            n_examples = len(data.train) + len(data.docs)
        if cfg.uses_beams and data.train:
            pick = sorted(rng.choice(len(data.train), min(cfg.rank_samples, len(data.train)), replace=False))
            qs = [data.train[i] for i in pick]
            beams = teacher_beams(teacher, [q.text for q in qs], min(cfg.rank_k, len(ids)), max(train_cfg.beam, cfg.rank_k),
                                  targets=[sorted(q.relevant)[0] for q in qs])
        valid = data.valid[: train_cfg.eval_queries] if train_cfg.eval_queries else []

        def evaluate() -> float:
            ranked = gm.rank_texts([q.text for q in valid], 10, beam=train_cfg.beam)
            return rank_metrics([[i for i, _ in r] for r in ranked], [q.relevant for q in valid])["recall@10"]
        has_eval = bool(valid)
    if beams is not None and len(beams[0]) == 0:
        beams = None

    gm = GenerativeModel(model, ids, teacher.items, tokenizer=teacher.tokenizer, popularity=list(teacher.popularity))
    _, log = fit(net, _attach_beams(make_batches, beams, cfg, train_cfg.seed), evaluate if has_eval else None, train_cfg, "distill",
                 on_epoch=on_epoch)
    gm.model = model.eval()
    gm.meta = {"train": asdict(train_cfg), "distill": asdict(cfg), "teacher_params": t_model.n_params(),
               "n_examples": int(n_examples), "n_beam_inputs": 0 if beams is None else int(len(beams[0])), "log": log}
    return gm
