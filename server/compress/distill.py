"""Knowledge-distillation losses (pure functions) and the config of the later ``distill()`` trainer.

* :func:`kd_loss` - Hinton et al.: ``alpha * CE(target, student) + (1 - alpha) * T^2 * KL(p_T || p_S)``,
  both distributions a softmax at temperature ``T``; the ``T^2`` keeps the soft term's gradient
  scale independent of ``T``.
* :func:`listwise_rank_loss` - ListNet: cross-entropy between ``softmax(teacher)`` and
  ``softmax(student)`` over the teacher's top-k candidates, so the student keeps the teacher's
  ranking (for generative retrieval: the beam scores of the same candidate IDs).

Teacher tensors are detached: no gradient flows into the teacher.

>>> s = torch.tensor([[0.0, 0.0]]); t = torch.tensor([[2.0, 0.0]]); y = torch.tensor([0])
>>> round(kd_loss(s, t, y, alpha=1.0).item(), 4)   # plain cross-entropy: log 2
0.6931
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edge_gr.errors import InputError

__all__ = ["kd_loss", "listwise_rank_loss", "DistillConfig"]


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
    """Settings of the later ``distill()`` trainer (issue #3); nothing here trains yet.

    ``alpha``: weight of the hard-label CE in :func:`kd_loss` (1 - alpha on the soft KL term).
    ``temperature``: softmax temperature of the soft term (and of the rank loss).
    ``rank_weight``: weight of :func:`listwise_rank_loss` on the teacher's beam candidates.
    ``hidden_weight``: weight of an MSE between (projected) student and teacher hidden states.
    ``seq_level``: sequence-level KD (train on the teacher's beam outputs) instead of token level.

    >>> DistillConfig(alpha=0.3).temperature
    2.0
    """

    alpha: float = 0.5
    temperature: float = 2.0
    rank_weight: float = 0.0
    hidden_weight: float = 0.0
    seq_level: bool = False

    def __post_init__(self):
        _check_common(self.alpha, self.temperature)
        if self.rank_weight < 0 or self.hidden_weight < 0:
            raise InputError(f"rank_weight and hidden_weight must be >= 0, got {self.rank_weight}, {self.hidden_weight}")
