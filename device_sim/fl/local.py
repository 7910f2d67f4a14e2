"""On-device fine-tuning of the adapters, optionally with DP-SGD (Opacus), and the
per-device privacy ledger.

Privacy unit: one *record* (one rating and the history before it). Each participation
runs ``steps`` DP-SGD steps with Poisson sampling at rate ``q = batch_size / n`` and
noise multiplier ``sigma``; the device's ledger composes every participation with
Opacus' RDP accountant, so its epsilon after N rounds is exact for what it ran. The
noise is planned so that ``max_participations`` participations stay within
``target_epsilon``; a device whose next participation would exceed its budget declines
(:class:`PrivacyBudgetExceeded`). Client-level (whole-history) protection is the
central DP of :mod:`device_sim.fl.flower` (Flower's DP wrappers) on top.

>>> ledger = PrivacyLedger()
>>> sigma, q = plan_noise(100, LocalConfig(dp=DPConfig(target_epsilon=1.0)))
>>> ledger.record(sigma, q, 5); round(ledger.epsilon(1e-5), 1) <= 1.0
True
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from edge_gr.errors import EdgeGRError, InputError

from .adapters import get_adapter

__all__ = ["DPConfig", "LocalConfig", "LocalResult", "PrivacyLedger", "PrivacyBudgetExceeded", "plan_noise",
           "local_train", "records_loss", "sequence_targets", "examples"]


class PrivacyBudgetExceeded(EdgeGRError):
    """A device's next participation would push its epsilon past its budget (it declines)."""


@dataclass(frozen=True)
class DPConfig:
    """Record-level DP-SGD on the device. ``target_epsilon=None`` turns DP off."""

    target_epsilon: float | None = 1.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    max_participations: int = 1   # participations the noise is planned for; more are refused


@dataclass(frozen=True)
class LocalConfig:
    """One device's local training per participation."""

    steps: int = 10
    batch_size: int = 32
    lr: float = 2e-2
    max_records: int = 128        # most recent records used (bounds CPU time and memory)
    dp: DPConfig = field(default_factory=DPConfig)
    optimizer: str = "adam"       # "adam" | "sgd" (plain SGD: the update is a sum of gradients, what FedAvg's theory averages)
    # "records": batches of (history, next item) records, one target each (record-level DP-SGD possible);
    # "sequence": the device's last max_len + 1 items as one sequence, every position predicting the next item (the
    # cloud's own loss: one forward covers every record of the window). No record-level DP: a sequence is all records.
    objective: str = "records"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LocalResult:
    arrays: dict[str, np.ndarray]
    n_records: int
    loss: float            # mean training loss of the last step (noisy-free forward)
    epsilon: float         # the device's total epsilon after this participation (0 without DP)
    sigma: float
    cpu_s: float           # host CPU seconds spent (process time)


class PrivacyLedger:
    """A device's DP-SGD history ``[(sigma, q, steps), ...]`` and its epsilon (Opacus RDP)."""

    def __init__(self, history: list[tuple[float, float, int]] | None = None):
        self.history = [tuple(h) for h in (history or [])]

    def record(self, sigma: float, q: float, steps: int) -> None:
        self.history.append((float(sigma), float(q), int(steps)))

    def epsilon(self, delta: float) -> float:
        if not self.history:
            return 0.0
        from opacus.accountants import RDPAccountant

        acc = RDPAccountant()
        acc.history = list(self.history)
        return float(acc.get_epsilon(delta))

    def epsilon_after(self, sigma: float, q: float, steps: int, delta: float) -> float:
        return PrivacyLedger(self.history + [(sigma, q, steps)]).epsilon(delta)

    def to_list(self) -> list[list[float]]:
        return [list(h) for h in self.history]


def plan_noise(n_records: int, cfg: LocalConfig) -> tuple[float, float]:
    """``(sigma, q)`` so that ``max_participations`` participations cost ``target_epsilon``."""
    if n_records < 1:
        raise InputError("a device with no records cannot train", hint="wait until its history has >= 2 items")
    q = min(1.0, cfg.batch_size / n_records)
    if cfg.dp.target_epsilon is None:
        return 0.0, q
    if cfg.dp.target_epsilon <= 0:
        raise InputError(f"target_epsilon must be > 0, got {cfg.dp.target_epsilon}", hint="or None for no DP")
    from opacus.accountants.utils import get_noise_multiplier

    sigma = get_noise_multiplier(target_epsilon=cfg.dp.target_epsilon, target_delta=cfg.dp.delta, sample_rate=q,
                                 steps=cfg.steps * cfg.dp.max_participations, accountant="rdp", epsilon_tolerance=0.005)
    return float(sigma), q


class _RecordLoss(nn.Module):
    # Opacus needs the per-record loss behind a forward(); records are (src, tgt) pairs
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, src, tgt):
        return self.model.retrieval_loss(src, tgt)  # encode the history, decode one target per record


def records_loss(model: nn.Module, src: np.ndarray, tgt: np.ndarray, batch_size: int = 256) -> float:
    """Mean next-item loss of ``model`` on records (no grad)."""
    was = model.training
    model.eval()
    tot, n = 0.0, 0
    dev = next(model.parameters()).device
    with torch.no_grad():
        for s in range(0, len(src), batch_size):
            b = torch.from_numpy(src[s:s + batch_size]).to(dev), torch.from_numpy(tgt[s:s + batch_size]).to(dev)
            tot += float(model.retrieval_loss(*b)) * len(b[0])
            n += len(b[0])
    model.train(was)
    return tot / max(n, 1)


def sequence_targets(seq: np.ndarray) -> int:
    """How many next-item predictions a left-padded sequence batch holds (the FedAvg weight of a device)."""
    seq = np.asarray(seq)
    return int(((seq[:, 1:] != 0) & (seq[:, :-1] != 0)).sum())


def examples(src: np.ndarray, cfg: LocalConfig) -> int:
    """How many next-item examples a device's training data (from :meth:`FLSetup.local_data`) holds under ``cfg``."""
    return sequence_targets(src) if cfg.objective == "sequence" else len(src)


def _optimizer(params, cfg: LocalConfig):
    if cfg.optimizer not in ("adam", "sgd"):
        raise InputError(f"unknown local optimizer {cfg.optimizer!r}", hint="use 'adam' or 'sgd'")
    return torch.optim.Adam(params, lr=cfg.lr) if cfg.optimizer == "adam" else torch.optim.SGD(params, lr=cfg.lr)


def _train_sequence(model: nn.Module, params, seq: np.ndarray, cfg: LocalConfig, seed: int) -> LocalResult:
    # `steps` full-window steps of the cloud's next-item loss (model.forward = rec_loss) on the device's own sequence
    t0 = time.process_time()
    torch.manual_seed(seed)
    model.train()
    opt = _optimizer(params, cfg)
    x = torch.from_numpy(np.asarray(seq)).to(params[0].device)
    loss = float("nan")
    for _ in range(cfg.steps):
        opt.zero_grad(set_to_none=True)
        l = model(x)
        l.backward()
        opt.step()
        loss = float(l.detach())
    model.eval()
    return LocalResult(arrays=get_adapter(model), n_records=sequence_targets(seq), loss=loss, epsilon=0.0, sigma=0.0,
                       cpu_s=time.process_time() - t0)


def local_train(model: nn.Module, src: np.ndarray, tgt: np.ndarray, cfg: LocalConfig,
                ledger: PrivacyLedger | None = None, seed: int = 0) -> LocalResult:
    """Fine-tune ``model``'s adapters (in place) on one device's records (``objective="sequence"``: ``src`` is its
    sequence from :meth:`FLSetup.local_data`, ``tgt`` unused); return the new adapter.

    With ``cfg.dp.target_epsilon`` set this is DP-SGD through Opacus (Poisson sampling,
    per-record clipping to ``max_grad_norm``, Gaussian noise), and ``ledger`` (the
    device's, updated in place) must allow one more participation.
    """
    if cfg.objective not in ("records", "sequence"):
        raise InputError(f"unknown local objective {cfg.objective!r}", hint="use 'records' or 'sequence'")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError("the model has no trainable adapter", hint="call add_adapters(model) first")
    if cfg.objective == "sequence":
        if cfg.dp.target_epsilon is not None:
            raise InputError("record-level DP-SGD needs objective='records' (a sequence holds every record)",
                             hint="set LocalConfig(dp=DPConfig(target_epsilon=None)) and use client-level DP on the server")
        return _train_sequence(model, params, src, cfg, seed)
    src, tgt = src[-cfg.max_records:], tgt[-cfg.max_records:]
    n = len(src)
    sigma, q = plan_noise(n, cfg)
    dp = cfg.dp.target_epsilon is not None
    ledger = ledger if ledger is not None else PrivacyLedger()
    if dp:
        eps_next = ledger.epsilon_after(sigma, q, cfg.steps, cfg.dp.delta)
        if eps_next > cfg.dp.target_epsilon * 1.001:
            raise PrivacyBudgetExceeded(f"epsilon would reach {eps_next:.3f} > budget {cfg.dp.target_epsilon}",
                                        hint="the device sits out; raise target_epsilon or max_participations")
    t0 = time.process_time()
    dev = params[0].device  # records go where the model is (a GPU for bench/fl_screen.py)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.train()
    wrapped = _RecordLoss(model)
    opt = _optimizer(params, cfg)
    ds = torch.utils.data.TensorDataset(torch.from_numpy(src), torch.from_numpy(tgt))
    loader = torch.utils.data.DataLoader(ds, batch_size=min(cfg.batch_size, n), shuffle=True, generator=g)
    hooks = None
    if dp:
        from opacus import PrivacyEngine

        engine = PrivacyEngine(accountant="rdp")
        # wrap_model=False: hooks on our own module, removed after (the model is reused)
        hooks, opt, loader = engine.make_private(module=wrapped, optimizer=opt, data_loader=loader, noise_multiplier=sigma,
                                                 max_grad_norm=cfg.dp.max_grad_norm, poisson_sampling=True,
                                                 wrap_model=False, noise_generator=g)
    loss = float("nan")
    try:
        step = 0
        while step < cfg.steps:
            for s, t in loader:
                if step >= cfg.steps:
                    break
                opt.zero_grad(set_to_none=True)
                if len(s) == 0:  # an empty Poisson batch: Opacus adds noise only
                    for p in params:
                        p.grad_sample = torch.zeros((0, *p.shape))
                else:
                    l = wrapped(s.to(dev), t.to(dev))
                    l.backward()
                    loss = float(l.detach())
                opt.step()
                step += 1
    finally:
        if hooks is not None:
            hooks.cleanup()
            for p in params:
                for a in ("grad_sample", "_forward_counter", "summed_grad"):
                    if hasattr(p, a):
                        delattr(p, a)
    model.eval()
    if dp:
        ledger.record(sigma, q, cfg.steps)
    return LocalResult(arrays=get_adapter(model), n_records=n, loss=loss,
                       epsilon=ledger.epsilon(cfg.dp.delta) if dp else 0.0, sigma=sigma,
                       cpu_s=time.process_time() - t0)
