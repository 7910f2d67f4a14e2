"""Run a federated experiment end to end on Flower's simulation engine (Ray backend).

``run_federated(spec)`` trains/loads the base model, runs ``spec.rounds`` rounds over a
fleet of ``spec.num_devices`` virtual phones (clients sampled per round from all of
them), evaluates the global adapter after every round on a held-out cohort, and adds
the comparison points the report needs:

- ``base``: the cloud model, no adapter (round 0);
- ``federated``: the FedAvg global adapter after each round;
- ``personalized``: federated global + a local fine-tune on the device's own records;
- ``local_only``: a local fine-tune from the base, no federation;
- ``centralized``: the same adapter trained in the cloud on the pooled device records
  (no DP) for as many steps as the federation ran in total.

>>> spec = FLSpec(rounds=2)                      # doctest: +SKIP
>>> out = run_federated(spec)                    # doctest: +SKIP
>>> out["evaluation"]["2"]["ndcg@10"]            # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import numpy as np

from .errors import FederationError
from .flower import FLSpec, env_for, make_client_app, make_server_app
from .setup import paired  # noqa: F401  (re-exported: the paired bootstrap lives with the other pure evaluation code)

__all__ = ["run_federated", "run_baselines", "eval_cohort", "personalize_eval", "centralized_eval", "paired", "run_secagg"]


def eval_cohort(spec: FLSpec, env) -> list[str]:
    users = [u for u in env.users if len(env.setup.records(u)[0]) >= spec.min_records]
    rng = np.random.default_rng([spec.seed, 7])
    return sorted(rng.choice(users, min(spec.eval_users, len(users)), replace=False).tolist())


def personalize_eval(spec: FLSpec, env, users, start: dict[str, np.ndarray], local=None) -> dict:
    """Each user fine-tunes ``start`` on its own records, then is scored.

    The personal adapter never leaves the device, so this step needs no DP (``local``
    defaults to ``spec.local`` with DP off); only what is uploaded is privatised.
    """
    from server.metrics import rank_metrics

    from .adapters import set_adapter
    from .local import local_train

    local = local or replace(spec.local, steps=spec.personal_steps, lr=spec.personal_lr,
                             dp=replace(spec.local.dp, target_epsilon=None))
    ids, rel = [], []
    for k, u in enumerate(users):
        set_adapter(env.gm.model, start)
        src, tgt = env.setup.records(u, max_records=local.max_records)
        local_train(env.gm.model, src, tgt, local, None, seed=spec.seed * 1000 + k)
        r = env.gm.rank([env.setup.split.test_history(u)], 10, beam=spec.eval_beam)[0]
        ids.append([i for i, _ in r])
        rel.append({env.setup.split.test[u]})
    set_adapter(env.gm.model, start)
    return {**rank_metrics(ids, rel), "per_user": [rank_metrics([a], [b])["ndcg@10"] for a, b in zip(ids, rel)]}


def centralized_eval(spec: FLSpec, env, users, steps: int, lr: float | None = None) -> dict:
    """The adapter trained in the cloud on every fleet device's records pooled (no DP).

    ``lr`` defaults to a tenth of the devices' (3,000 Adam steps at the devices' 2e-2
    over-fitted the pooled records: NDCG@10 0.0255 against the base's 0.0941).
    """
    from .adapters import set_adapter
    from .local import LocalConfig, local_train
    from .setup import ndcg_eval

    srcs, tgts = zip(*(env.setup.records(u, max_records=spec.local.max_records) for u in env.users))
    src, tgt = np.concatenate(srcs), np.concatenate(tgts)
    z = env.init
    set_adapter(env.gm.model, z)
    lr = spec.local.lr / 10 if lr is None else lr
    cfg = LocalConfig(steps=steps, batch_size=spec.local.batch_size, lr=lr, max_records=len(src),
                      dp=replace(spec.local.dp, target_epsilon=None))
    t0 = time.time()
    local_train(env.gm.model, src, tgt, cfg, None, seed=spec.seed)
    out = {**ndcg_eval(env.setup, env.gm, users, beam=spec.eval_beam), "train_s": time.time() - t0, "steps": steps, "lr": lr,
           "records": int(len(src))}
    set_adapter(env.gm.model, z)
    return out


def run_baselines(spec: FLSpec, env, users: list[str], run: dict, max_central_steps: int = 3000) -> dict:
    """base / federated / personalized / local-only / centralized on ``users``, from a run's final adapter."""
    from .setup import ndcg_eval

    final = {k: np.asarray(v, dtype=np.float32) for k, v in run["final_arrays"].items()} if run["final_arrays"] else dict(env.init)
    zero = env.init  # B = 0: the base model's output
    t1 = time.time()
    b = {"base": ndcg_eval(env.setup, env.gm, users, zero, beam=spec.eval_beam, per_user=True),
         "federated": ndcg_eval(env.setup, env.gm, users, final, beam=spec.eval_beam, per_user=True),
         "personalized": personalize_eval(spec, env, users, final),
         "local_only": personalize_eval(spec, env, users, zero)}
    used = sum(r["used"] for r in run["rounds"] if not r["skipped"])
    # equal compute: as many optimizer steps as all used clients ran together
    b["centralized"] = centralized_eval(spec, env, users, max(1, min(used * spec.local.steps, max_central_steps)))
    b["users"] = len(users)
    b["personal_step"] = {"steps": spec.personal_steps, "lr": spec.personal_lr, "dp": "none (the personal adapter never leaves the device)"}
    # paired differences against the base model on the same users (95% bootstrap CI)
    b["vs_base"] = {k: paired(b[k]["per_user"], b["base"]["per_user"]) for k in ("federated", "personalized", "local_only")}
    for k in ("base", "federated", "personalized", "local_only"):
        b[k].pop("per_user")
    b["seconds"] = time.time() - t1
    return b


def run_federated(spec: FLSpec, *, baselines: bool = True, personal_users: int = 300, progress: bool = True,
                  num_cpus: int | None = None, max_central_steps: int = 3000) -> dict:
    """Run the whole experiment; returns the run log (rounds, evaluation, baselines, timings)."""
    import logging

    from flwr.simulation import run_simulation

    from .setup import ndcg_eval

    t_start = time.time()
    env = env_for(spec)  # trains or loads the base model once, here, before Ray starts
    t_setup = time.time() - t_start
    users = eval_cohort(spec, env)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=spec.rounds, desc=f"FL rounds ({len(env.users)} devices)")

    def evaluate(rnd: int, arrays: dict) -> dict:
        res = ndcg_eval(env.setup, env.gm, users, arrays, beam=spec.eval_beam, per_user=True)
        if bar is not None and rnd > 0:
            bar.update(1)
            bar.set_postfix(ndcg=f"{res['ndcg@10']:.4f}")
        return res

    sink: dict = {}
    cpus = num_cpus or os.cpu_count() or 1
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": cpus, "include_dashboard": False, "log_to_driver": False,
                             "logging_level": logging.ERROR}}
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    t0 = time.time()
    run_simulation(server_app=make_server_app(spec, evaluate, sink), client_app=make_client_app(spec),
                   num_supernodes=len(env.users), backend_config=backend)
    if bar is not None:
        bar.close()
    if "result" not in sink:
        from edge_gr.errors import EdgeGRError

        raise EdgeGRError("the Flower simulation ended without a result", hint="run with progress and read Flower's log above")
    out = sink["result"]
    out["timing"] = {"setup_s": t_setup, "simulation_s": time.time() - t0}
    ev = out["evaluation"]
    last = max(ev)
    # the global model after the last round vs the base, paired on the evaluation cohort
    out["global_vs_base"] = paired(ev[last]["per_user"], ev[0]["per_user"]) if 0 in ev else None
    for r in ev.values():
        r.pop("per_user", None)
    out["eval_users"] = len(users)
    if baselines:
        out["baselines"] = run_baselines(spec, env, users[:personal_users], out, max_central_steps)
    out["timing"]["total_s"] = time.time() - t_start
    if spec.result_path:
        from server.io import write_json

        write_json(spec.result_path, out)
    return out


# -- the same personalization under SecAgg+ (Flower's legacy API) ------------------------------
_LEDGERS: dict[str, object] = {}


def secagg_fit_fn(spec: FLSpec, users: list[str]):
    """The device's local training as a :func:`~device_sim.fl.secagg.make_secagg_apps` ``fit_fn``.

    Partition ``i`` is ``users[i]``. Each device's privacy ledger lives in the worker
    process (exact with one Ray worker, ``num_cpus=1``, as :func:`run_secagg` uses).
    """
    from .adapters import get_adapter, set_adapter
    from .local import PrivacyLedger, local_train

    def fit(pid: int, arrays: list, config: dict):
        env = env_for(spec)
        keys = sorted(get_adapter(env.gm.model))
        user = users[pid]
        set_adapter(env.gm.model, dict(zip(keys, arrays)))
        src, tgt = env.setup.local_data(user, spec.local)
        ledger = _LEDGERS.setdefault(user, PrivacyLedger())
        res = local_train(env.gm.model, src, tgt, spec.local, ledger, seed=spec.seed * 7919 + pid)
        # every report weighs the same (num_examples = 1 = max_weight): the record-level
        # DP bounds each device's influence, and unweighted SecAgg+ has the tightest error
        return [res.arrays[k] for k in keys], 1, {"epsilon": float(res.epsilon)}

    return fit


def run_secagg(spec: FLSpec, *, clients: int = 10, secure: bool = True, drop_fraction: float = 0.0,
               devices: int | None = None, delta: float = 1e-5) -> dict:
    """``spec.rounds`` rounds of FedAvg over ``clients`` sampled devices under SecAgg+ (robust + secure + private).

    ``devices`` (default ``clients``): the pool every round samples ``clients`` from (Flower's ``fraction_fit``).
    With ``spec.max_update_norm`` each client clips its update before masking and the server checks the unmasked mean
    (:mod:`device_sim.fl.secagg`); with ``spec.central_dp`` (``noise_multiplier``, ``clipping_norm``) the clipping bound
    is ``clipping_norm`` and the server adds client-level DP noise to the mean, accounted per device (Opacus RDP at
    ``q = clients / devices``); ``spec.attack`` corrupts those partitions' updates after their own checks.
    Returns per round the aggregate's held-out NDCG@10, the surviving partitions and the noise.
    """
    from .adapters import get_adapter
    from .emulate import client_epsilon
    from .local import examples
    from .secagg import make_secagg_apps, run_secagg_simulation
    from .setup import ndcg_eval

    env = env_for(spec)
    pool = [u for u in env.users if examples(env.setup.local_data(u, spec.local)[0], spec.local) >= spec.min_records]
    users = pool[:max(clients, devices or clients)]
    if len(users) < clients:
        raise FederationError(f"only {len(users)} devices have >= {spec.min_records} examples, {clients} wanted per round",
                              hint="lower --clients or raise --phones")
    keys = sorted(get_adapter(env.gm.model))
    init = [env.init[k] for k in keys]
    z = clip = None
    if spec.central_dp:
        z, clip = float(spec.central_dp["noise_multiplier"]), float(spec.central_dp["clipping_norm"])
    bounds = [b for b in (clip, spec.max_update_norm) if b is not None]
    bound = min(bounds) if bounds else None  # what each client clips to before masking
    server_app, client_app = make_secagg_apps(secagg_fit_fn(spec, users), num_rounds=spec.rounds, initial_arrays=init,
                                              min_clients=clients, fraction_fit=clients / len(users), secure=secure,
                                              num_shares=(1.0 if clients <= 20 else 15), drop_fraction=drop_fraction,
                                              drop_seed=spec.seed, max_update_norm=bound, noise_multiplier=z,
                                              attacks=[spec.attack] if spec.attack else ())
    t0 = time.time()
    results = run_secagg_simulation(server_app, client_app, num_supernodes=len(users), num_cpus=1, allow_skipped=True)
    cohort = eval_cohort(spec, env)
    q = clients / len(users)
    rounds = [{"round": r.server_round, "partitions": list(r.partition_ids), "dropped": len(r.dropped_node_ids),
               "skipped": r.skipped, "reason": r.reason, "noise_std": r.noise_std,
               **ndcg_eval(env.setup, env.gm, cohort, dict(zip(keys, r.arrays)), beam=spec.eval_beam)} for r in results]
    base = ndcg_eval(env.setup, env.gm, cohort, env.init, beam=spec.eval_beam)
    return {"secure": secure, "clients": clients, "devices": len(users), "sample_rate": q, "max_update_norm": bound,
            "noise_multiplier": z, "delta": delta,
            "epsilon": (client_epsilon(z, q, len(results), delta) if z else None),
            "sampled": sum(len(r.partition_ids) for r in results), "distinct": len({p for r in results for p in r.partition_ids}),
            "attack": spec.attack, "base": base, "rounds": rounds, "seconds": time.time() - t0,
            "final_arrays": {k: a.tolist() for k, a in zip(keys, results[-1].arrays)} if results else None}
