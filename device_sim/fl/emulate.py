"""FedAvg in one process, to choose a federated recipe fast (on a GPU), and the client-level
DP accountant with its extrapolation to larger fleets.

:func:`emulate` runs rounds of the same device step as the Flower ClientApp
(:func:`~device_sim.fl.local.local_train` on the device's own records), aggregated as
Flower's FedAvg (weighted by records) or, with ``noise_multiplier``, as Flower's
``DifferentialPrivacyServerSideFixedClipping`` (each update clipped to ``clipping_norm``,
unweighted mean, Gaussian noise of std ``z * C / m`` on the mean). Devices are sampled
uniformly (no battery / network declines: those only thin the cohort). It is a screen,
not the product path: ``edge-gr fl run`` runs the chosen recipe on Flower's engines.
Why a loop of our own for the screen: Flower's simulation needs Ray, whose wheel alone
(74 MB) does not fit the GPU host's 64 MiB carry, and on this 2-core machine one
1,000-device Flower round of the full-size recommender takes ~4 minutes.

Client-level privacy: one device = one unit, sampled with rate ``q = m / N`` per round;
the RDP accountant (Opacus) composes the subsampled Gaussian over the rounds.

>>> round(client_epsilon(1.0, 0.01, 100, 1e-5), 2) > 0
True
>>> z = plan_client_noise(1.0, 0.01, 100, 1e-5); abs(client_epsilon(z, 0.01, 100, 1e-5) - 1.0) < 0.01
True
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from .adapters import AdapterConfig, _key, adapter_bytes, get_adapter, set_adapter
from .local import LocalConfig, examples, local_train
from .setup import FLSetup, ndcg_eval

__all__ = ["EmuConfig", "emulate", "batched_local_train", "client_epsilon", "plan_client_noise", "extrapolate", "personal_eval"]


@dataclass(frozen=True)
class EmuConfig:
    rounds: int = 50
    clients_per_round: int = 50
    eval_every: int = 10
    noise_multiplier: float | None = None   # client-level DP (server-side fixed clipping); None = plain FedAvg ...
    target_epsilon: float | None = None     # ... or the epsilon to plan it for (over `rounds` at q = m / devices)
    clipping_norm: float = 1.0
    delta: float = 1e-5
    server_lr: float = 1.0
    # "avg": w += server_lr * mean update; "adam": FedAdam (eta = server_lr) as Flower 1.42 computes it but without its
    # bias-corrected eta (eta * sqrt(1 - b2^(t+1)) / (1 - b1^(t+1)): 0.74x at round 1, 0.47x at 10, 0.8x at 100, -> 1x):
    # what the screens of docs/federated.md measured
    server_opt: str = "avg"
    beta1: float = 0.9                      # Flower's FedAdam defaults
    beta2: float = 0.99
    tau: float = 1e-9                       # as `edge-gr fl run --aggregation fedadam` sets it (Flower's default is 1e-3)
    seed: int = 0
    beam: int = 20
    min_records: int = 4
    max_minutes: float | None = None        # stop early (the log says how many rounds ran)

    def to_dict(self) -> dict:
        return asdict(self)


RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [2 ** k for k in range(6, 17)]


def client_epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """Client-level epsilon of ``rounds`` subsampled Gaussian rounds (Opacus' RDP accountant)."""
    from opacus.accountants import RDPAccountant

    if noise_multiplier <= 0:
        return float("inf")
    acc = RDPAccountant()
    acc.history = [(float(noise_multiplier), float(sample_rate), int(rounds))]
    # Opacus' default orders stop at 63; a large noise multiplier (the extrapolation) is tightest at higher orders
    return float(acc.get_epsilon(delta, alphas=RDP_ORDERS))


def plan_client_noise(target_epsilon: float, sample_rate: float, rounds: int, delta: float) -> float:
    """The noise multiplier ``z`` whose ``rounds`` rounds at ``sample_rate`` cost ``target_epsilon``."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=rounds, accountant="rdp", epsilon_tolerance=0.005))


def extrapolate(noise_std_of_mean: float, clipping_norm: float, rounds: int, sample_rate: float,
                clients: tuple[int, ...] = (10_000, 100_000, 1_000_000)) -> list[dict]:
    """The accountant's epsilon for the *same noise on the averaged update* with more clients per round.

    The mean's noise std is ``z * C / m``: holding it (and so, to first order, the utility) fixed
    while ``m`` grows lets ``z = std * m / C`` grow linearly. The fleet is ``m / sample_rate`` devices
    (the same sampling rate) and ``delta = min(1e-5, 1 / fleet)``.
    """
    out = []
    for m in clients:
        z = noise_std_of_mean * m / clipping_norm
        fleet = int(round(m / sample_rate))
        delta = min(1e-5, 1.0 / fleet)
        z1 = plan_client_noise(1.0, sample_rate, rounds, delta)
        out.append({"clients_per_round": m, "fleet": fleet, "noise_multiplier": z, "delta": delta,
                    "epsilon": client_epsilon(z, sample_rate, rounds, delta),
                    # the other way round: at epsilon 1 with m clients, the noise on the mean is this much smaller
                    "noise_std_of_mean_at_epsilon_1": z1 * clipping_norm / m})
    return out


def batched_local_train(model, glob: dict[str, "torch.Tensor"], seqs: "torch.Tensor", local: LocalConfig,
                        seed: int = 0) -> dict[str, "torch.Tensor"]:
    """Every client's :func:`~device_sim.fl.local.local_train` (``objective="sequence"``) at once, on stacked copies.

    ``glob`` maps the model's parameter names to the global values, ``seqs`` is ``(clients, 1, S+1)``; returns the
    trained values stacked ``(clients, ...)``. Each client's loss depends only on its own slice, and Adam / SGD act
    element-wise, so this equals running the clients one after another (tests/test_fl_parts.py checks it) while one
    GPU launch serves all of them: torch.func's model-ensembling pattern (vmap over ``functional_call``).
    """
    import torch
    from torch.func import functional_call, vmap

    from .local import _optimizer

    m = seqs.shape[0]
    stacked = {n: v.detach().unsqueeze(0).repeat(m, *([1] * v.dim())).requires_grad_(True) for n, v in glob.items()}
    torch.manual_seed(seed)
    model.train()
    amp = seqs.device.type == "cuda"  # bf16 like the cloud's training on a GPU; fp32 (exact) on CPU

    def one(params, seq):
        return functional_call(model, params, (seq,))  # model.forward = rec_loss, the cloud's next-item loss

    loss_of = vmap(one, randomness="different")
    opt = _optimizer(list(stacked.values()), local)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    for _ in range(local.steps):
        opt.zero_grad(set_to_none=True)
        # SDPA's math backend: matmul + softmax, which vmap batches (the fused kernels have no batching rule for a
        # mask broadcast over the stacked clients)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp), sdpa_kernel([SDPBackend.MATH]):
            loss = loss_of(stacked, seqs).sum()
        loss.backward()
        opt.step()
    model.eval()
    return {n: v.detach() for n, v in stacked.items()}


class _Server:
    # The server side of a round on stacked client updates (torch, where the updates are): Flower's FedAvg weighting,
    # server-side fixed clipping + Gaussian noise, FedAdam (see EmuConfig.server_opt)
    def __init__(self, glob: dict, cfg: EmuConfig, m: int, seed: int):
        import torch

        self.cfg, self.m = cfg, m
        self.gen = torch.Generator(device=next(iter(glob.values())).device).manual_seed(seed)
        self.mom = {k: torch.zeros_like(v) for k, v in glob.items()} if cfg.server_opt == "adam" else None
        self.var = {k: torch.zeros_like(v) for k, v in glob.items()} if cfg.server_opt == "adam" else None

    def step(self, glob: dict, upd: dict, n_examples: "torch.Tensor") -> "torch.Tensor":
        """Apply one round's stacked updates ``upd`` (k -> (m, ...)) to ``glob`` in place; returns the update norms."""
        import torch

        cfg = self.cfg
        norms = torch.sqrt(sum((u.double().flatten(1) ** 2).sum(1) for u in upd.values()))
        dp = cfg.noise_multiplier is not None
        if dp:
            w = torch.clamp(cfg.clipping_norm / norms.clamp_min(1e-12), max=1.0) / len(norms)
        else:
            w = n_examples.double() / n_examples.double().sum()
        for k, u in upd.items():
            mean = torch.tensordot(w.to(u.device), u.double(), dims=1)
            if dp:
                mean = mean + torch.randn(mean.shape, generator=self.gen, device=mean.device, dtype=mean.dtype) * (
                    cfg.noise_multiplier * cfg.clipping_norm / self.m)
            if self.mom is not None:
                self.mom[k] = cfg.beta1 * self.mom[k] + (1 - cfg.beta1) * mean
                self.var[k] = cfg.beta2 * self.var[k] + (1 - cfg.beta2) * mean * mean
                mean = self.mom[k] / (torch.sqrt(self.var[k]) + cfg.tau)
            glob[k] = (glob[k] + cfg.server_lr * mean).float()
        return norms


def emulate(setup: FLSetup, acfg: AdapterConfig, local: LocalConfig, cfg: EmuConfig, eval_users: list[str],
            *, device: str = "cpu", targets: tuple[str, ...] = ("valid",), progress: bool = True) -> dict:
    """Run ``cfg.rounds`` FedAvg rounds of ``acfg``'s parameters; score ``eval_users`` every ``eval_every`` rounds.

    Returns ``{"curve": {round: {target: metrics}}, "per_user": {target: [ndcg@10, ...] of the base and the last
    round}, "upload_bytes", "epsilon", ...}``. Local training never uses record-level DP here (client-level DP is the
    unit this measures). ``local.objective == "sequence"`` trains a round's clients together
    (:func:`batched_local_train`); ``"records"`` one after another.
    """
    import torch

    gm = setup.adapted_model(acfg)
    gm.model.to(device)
    init = get_adapter(gm.model)
    names = {k: n for n, p in gm.model.named_parameters() for k in [_key(n)] if k in init}  # wire key -> parameter name
    glob = {k: torch.from_numpy(v).to(device) for k, v in init.items()}
    local = replace(local, dp=replace(local.dp, target_epsilon=None))
    data = {u: setup.local_data(u, local) for u in setup.users}
    pool = [u for u in setup.users if examples(data[u][0], local) >= cfg.min_records]
    m = min(cfg.clients_per_round, len(pool))
    q = m / len(pool)
    rng = np.random.default_rng([cfg.seed, 3])
    if cfg.noise_multiplier is None and cfg.target_epsilon is not None:
        cfg = replace(cfg, noise_multiplier=plan_client_noise(cfg.target_epsilon, q, cfg.rounds, cfg.delta))
    dp = cfg.noise_multiplier is not None
    server = _Server(glob, cfg, m, seed=cfg.seed)
    batched = local.objective == "sequence"

    def arrays() -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in glob.items()}

    def score(arr) -> dict:
        return {t: ndcg_eval(setup, gm, eval_users, arr, beam=cfg.beam, per_user=True, target=t) for t in targets}

    def summary(res: dict) -> dict:
        return {t: {k: v for k, v in r.items() if k != "per_user"} for t, r in res.items()}

    first = score(init)
    curve = {0: summary(first)}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.rounds, desc=f"emulated FedAvg ({len(pool)} devices, {m}/round)")
    t0, rounds_run, last = time.time(), 0, first
    norms: list[float] = []
    for rnd in range(1, cfg.rounds + 1):
        chosen = [pool[j] for j in rng.choice(len(pool), m, replace=False)]
        n_ex = torch.tensor([examples(data[u][0], local) for u in chosen], device=device)
        if batched:
            seqs = torch.from_numpy(np.stack([data[u][0] for u in chosen])).to(device)
            new = batched_local_train(gm.model, {names[k]: v for k, v in glob.items()}, seqs, local,
                                      seed=int(rng.integers(2**31)))
            upd = {k: new[names[k]] - glob[k] for k in glob}
        else:
            ups, start = [], arrays()  # every client of the round starts from the same global weights
            for u in chosen:
                set_adapter(gm.model, start)
                src, tgt = data[u]
                res = local_train(gm.model, src, tgt, local, None, seed=int(rng.integers(2**31)))
                ups.append({k: torch.from_numpy(res.arrays[k]).to(device) - glob[k] for k in glob})
            upd = {k: torch.stack([x[k] for x in ups]) for k in glob}
        norms.extend(server.step(glob, upd, n_ex).tolist())
        rounds_run = rnd
        out_of_time = cfg.max_minutes is not None and time.time() - t0 > 60 * cfg.max_minutes
        if rnd % cfg.eval_every == 0 or rnd == cfg.rounds or out_of_time:
            last = score(arrays())
            curve[rnd] = summary(last)
            if bar is not None:
                bar.set_postfix(ndcg=f"{next(iter(curve[rnd].values()))['ndcg@10']:.4f}")
        if bar is not None:
            bar.update(1)
        if out_of_time:
            break
    if bar is not None:
        bar.close()
    if rounds_run not in curve:
        last = score(arrays())
        curve[rounds_run] = summary(last)
    final = arrays()
    set_adapter(gm.model, init)
    return {"adapter": acfg.to_dict(), "local": local.to_dict(), "config": cfg.to_dict(), "devices": len(pool),
            "clients_per_round": m, "sample_rate": q, "rounds_run": rounds_run, "seconds": time.time() - t0,
            "upload_bytes": adapter_bytes(init), "params": int(sum(v.size for v in init.values())),
            "update_norm": {"median": float(np.median(norms)), "p90": float(np.percentile(norms, 90))} if norms else None,
            "epsilon": (client_epsilon(cfg.noise_multiplier, q, rounds_run, cfg.delta) if dp else None),
            "noise_std_of_mean": (cfg.noise_multiplier * cfg.clipping_norm / m if dp else 0.0),
            "curve": curve, "per_user": {t: {"base": first[t]["per_user"], "final": last[t]["per_user"]} for t in targets},
            "final_arrays": final}


def personal_eval(setup: FLSetup, acfg: AdapterConfig, start: dict[str, np.ndarray], users: list[str], local: LocalConfig,
                  *, only: tuple[str, ...] | None = None, device: str = "cpu", target: str = "valid", beam: int = 20,
                  seed: int = 0) -> list[float]:
    """Per-user NDCG@10 after each user fine-tunes the federated parameters (``acfg``, starting from the global
    ``start``) on its own records; ``only`` (regexes over wire keys) restricts the personal step to those, e.g. the
    output head. ``local.steps = 0``: no personal step. The personal weights never leave the device: no DP."""
    import re

    from server.metrics import rank_metrics

    gm = setup.adapted_model(acfg)
    gm.model.to(device)
    keys = set(get_adapter(gm.model))
    if set(start) != keys:
        raise ValueError("start must hold exactly the federated parameters of acfg")
    frozen = []
    if only:
        pat = "|".join(f"(?:{t})" for t in only)
        frozen = [p for n, p in gm.model.named_parameters() if p.requires_grad and not re.fullmatch(pat, _key(n))]
    local = replace(local, dp=replace(local.dp, target_epsilon=None))
    split = setup.split
    out = []
    for k, u in enumerate(users):
        set_adapter(gm.model, start)
        if local.steps > 0:
            src, tgt = setup.local_data(u, local)
            for p in frozen:
                p.requires_grad_(False)
            try:
                local_train(gm.model, src, tgt, local, None, seed=seed * 100_003 + k)
            finally:
                for p in frozen:
                    p.requires_grad_(True)
        hist = split.train[u] if target == "valid" else split.test_history(u)
        r = gm.rank([hist], 10, beam=beam)[0]
        rel = split.valid[u] if target == "valid" else split.test[u]
        out.append(rank_metrics([[i for i, _ in r]], [{rel}])["ndcg@10"])
    return out
