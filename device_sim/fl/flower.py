"""Flower ServerApp / ClientApp (Message API) for federated adapter personalization.

The ClientApp is one phone: it checks it may train (online, battery, privacy budget,
enough history), fine-tunes the adapters on its own records (DP-SGD optionally), charges
its battery for the CPU and radio it used, and replies with the adapter weights and a
few scalars - never a record. A device that declines, misses the round deadline or
drops mid-round replies with a reason code only.

The ServerApp runs FedAvg (optionally inside Flower's central-DP wrapper) behind
:class:`EdgeStrategy`, which over-selects clients, drops declined/late replies, keeps
the first ``clients_per_round`` reports, skips a round below ``min_clients`` instead of
stalling, and logs every reply it received (keys, shapes, metric names, wire bytes) so
tests can check what reached the server.

>>> REASONS["privacy-budget"]
3
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # read when flwr is imported

import numpy as np  # noqa: E402
from flwr.serverapp.strategy import Strategy  # noqa: E402

from .adapters import AdapterConfig  # noqa: E402
from .local import DPConfig, LocalConfig  # noqa: E402
from .robust import check_update, clip_examples  # noqa: E402
from .setup import FLData  # noqa: E402

__all__ = ["FLSpec", "EdgeStrategy", "REASONS", "make_client_app", "make_server_app", "wire_bytes",
           "ALLOWED_REPLY_METRICS"]

# why a device sent no update (reply metric "declined")
REASONS = {"offline": 1, "battery": 2, "privacy-budget": 3, "few-records": 4, "deadline": 5, "dropped": 6}
# the only scalars a reply may carry (the privacy test checks this list)
ALLOWED_REPLY_METRICS = {"num-examples", "loss", "epsilon", "sigma", "cpu-s", "device-s", "energy-j", "declined",
                         "battery", "bytes-down"}


@dataclass
class FLSpec:
    """Everything the apps need; picklable, JSON-able (deployment passes it as run config)."""

    data: FLData = field(default_factory=FLData)
    cache: str = ".cache/edge_gr/fl"
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    num_devices: int | None = None     # first N users of the data become the fleet (None = all)
    rounds: int = 10
    clients_per_round: int = 50
    overselect: float = 1.3            # sample this many times clients_per_round (dropouts, declines)
    min_clients: int = 10              # a round with fewer usable reports is skipped (model unchanged)
    deadline_s: float = 300.0          # simulated device seconds (compute + transfer) per round
    drop_prob: float = 0.0             # extra chance a device drops mid-round (after training)
    min_battery: float = 0.2
    min_records: int = 4
    eligibility: bool = True           # False: every sampled device trains (harness tests); no offline/battery declines
    hours_per_round: float = 1.0
    start_hour: float = 20.0           # clock of round 1 (hours since midnight, day 0)
    fleet_seed: int = 0
    tier_mix: dict | None = None
    central_dp: dict | None = None     # {"noise_multiplier": z, "clipping_norm": c} (Flower's server-side wrapper)
    aggregation: str = "fedavg"        # fedavg | fedadam | median | trimmed | krum | multikrum | bulyan (device_sim.fl.robust)
    server_lr: float = 1e-3            # fedadam's eta
    trim_beta: float = 0.2             # trimmed: fraction cut from each side
    byzantine: int = 1                 # krum / multikrum / bulyan: malicious clients tolerated
    max_examples: int = 10_000         # a reply's num-examples is clipped to this (its weight)
    max_update_norm: float | None = None   # L2 bound on a reply's change to the global adapter (None: finite check only)
    attack: dict | None = None         # robustness evaluation: adversarial partitions (device_sim.fl.attacks)
    eval_users: int = 1000
    # the on-device personal step after federation (never uploaded, so no DP). Gentle on
    # purpose: 10 steps at lr 2e-2 halved NDCG@10 on ML-1M (over-fits the user's past)
    personal_steps: int = 5
    personal_lr: float = 2e-3
    eval_beam: int = 20
    seed: int = 0
    result_path: str | None = None     # the ServerApp writes its run log here (JSON)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, s: str) -> "FLSpec":
        from server.model import GRConfig
        from server.train import TrainConfig

        d = json.loads(s)
        data = d.pop("data")
        # fields of older GRConfigs (quantisation lived in the config before compression recipes) are dropped
        data["model"] = GRConfig.from_dict({k: v for k, v in data["model"].items() if k not in ("quant", "grouped")})
        data["train"] = TrainConfig(**data["train"])
        data["levels"] = tuple(data["levels"])
        ad = d.pop("adapter")
        ad["targets"] = tuple(ad["targets"])
        ad["train"] = tuple(ad.get("train", ()))
        lc = d.pop("local")
        lc["dp"] = DPConfig(**lc["dp"])
        return cls(data=FLData(**data), adapter=AdapterConfig(**ad), local=LocalConfig(**lc), **d)


# -- process-level environment (each Ray actor / SuperNode builds it once) ---------------
_ENVS: dict[str, "_Env"] = {}


class _Env:
    def __init__(self, spec: FLSpec):
        import torch

        from server.data.base import RecData

        from ..fleet import Fleet
        from .setup import prepare

        torch.set_num_threads(1)
        self.setup = prepare(spec.data, spec.cache, progress=False)
        users = self.setup.users[: spec.num_devices] if spec.num_devices else self.setup.users
        self.users = users
        rd = RecData("fleet", self.setup.gm.items, {u: self.setup.split.train[u] for u in users})
        self.fleet = Fleet.from_recdata(rd, seed=spec.fleet_seed, tier_mix=spec.tier_mix)
        torch.manual_seed(spec.seed)
        self.gm = self.setup.adapted_model(spec.adapter)
        from .adapters import get_adapter

        self.init = get_adapter(self.gm.model)  # the federation's round-0 adapter (A random, B = 0: equals the base)


def env_for(spec: FLSpec) -> _Env:
    key = spec.to_json()
    if key not in _ENVS:
        _ENVS.clear()  # one experiment per process at a time
        _ENVS[key] = _Env(spec)
    return _ENVS[key]


def wire_bytes(obj) -> int:
    """Serialized size of a Flower message / record tree (what crosses the network)."""
    n = len(obj.deflate())
    for child in (obj.children or {}).values():
        n += wire_bytes(child)
    return n


def _arrays_to_dict(rec) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in rec.items()}


def _dict_to_arrays(d: dict[str, np.ndarray]):
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(np.ascontiguousarray(v, dtype=np.float32)) for k, v in d.items()})


# -- client ------------------------------------------------------------------------------
def client_train(spec: FLSpec, msg, context):
    """One device's answer to a train message (the body of the ClientApp)."""
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

    from ..battery import task_energy_j
    from ..network import transfer_time
    from .adapters import set_adapter
    from .local import PrivacyBudgetExceeded, PrivacyLedger, examples, local_train

    env = env_for(spec)
    pid = int(context.node_config["partition-id"])
    user = env.users[pid % len(env.users)]
    dev = env.fleet[user]
    rnd = int(msg.content["config"]["server-round"])
    t = spec.start_hour + (rnd - 1) * spec.hours_per_round
    st = context.state.config_records.get("device")
    if st is not None:  # restore this device's battery and privacy ledger (kept on the device)
        dev.battery.level, dev.battery.t = float(st["battery"]), float(st["t"])
        ledger = PrivacyLedger(json.loads(str(st["ledger"])))
    else:
        ledger = PrivacyLedger()
    bytes_down = wire_bytes(msg.content)

    def reply(metrics: dict, arrays=None) -> Message:
        context.state.config_records["device"] = ConfigRecord(
            {"battery": float(dev.battery.level), "t": float(dev.battery.t), "ledger": json.dumps(ledger.to_list())})
        content = RecordDict({"metrics": MetricRecord({**metrics, "battery": float(dev.battery.level), "bytes-down": bytes_down})})
        if arrays is not None:
            content["arrays"] = arrays
        return Message(content=content, reply_to=msg)

    net = dev.network.network_at(t) if spec.eligibility else (dev.network.network_at(t) or "wifi")
    if net is None:
        return reply({"declined": REASONS["offline"]})
    if (spec.eligibility and dev.battery.advance(max(t, dev.battery.t)) < spec.min_battery
            and not dev.battery.is_charging(t)):
        return reply({"declined": REASONS["battery"]})
    src, tgt = env.setup.local_data(user, spec.local)
    if examples(src, spec.local) < spec.min_records:
        return reply({"declined": REASONS["few-records"]})
    set_adapter(env.gm.model, _arrays_to_dict(msg.content["arrays"]))
    try:
        res = local_train(env.gm.model, src, tgt, spec.local, ledger, seed=hash((spec.seed, rnd, pid)) % 2**31)
    except PrivacyBudgetExceeded:
        return reply({"declined": REASONS["privacy-budget"]})
    out = _dict_to_arrays(res.arrays)
    up = wire_bytes(out)
    device_s = dev.profile.device_seconds(res.cpu_s) + transfer_time(bytes_down, net, "down") + transfer_time(up, net, "up")
    energy = task_energy_j(dev.profile, res.cpu_s, net, mb_up=up / 1e6, mb_down=bytes_down / 1e6)
    dev.battery.drain(energy)
    # with central DP every report weighs the same (the clipped-update sensitivity is C / k)
    metrics = {"num-examples": 1 if spec.central_dp else int(res.n_records), "loss": float(res.loss), "epsilon": float(res.epsilon),
               "sigma": float(res.sigma), "cpu-s": float(res.cpu_s), "device-s": float(device_s), "energy-j": float(energy)}
    if device_s > spec.deadline_s:
        return reply({**metrics, "declined": REASONS["deadline"]})
    rng = np.random.default_rng([spec.seed, rnd, pid])
    if rng.random() < spec.drop_prob or (spec.eligibility and not dev.network.is_online(t + device_s / 3600.0)):
        return reply({**metrics, "declined": REASONS["dropped"]})
    return reply(metrics, out)


def make_client_app(spec: FLSpec):
    """The device side as a Flower ``ClientApp``."""
    from flwr.clientapp import ClientApp

    from .attacks import attack_mod

    app = ClientApp(mods=[attack_mod(spec.attack)] if spec.attack else [])

    @app.train()
    def train(msg, context):
        return client_train(spec, msg, context)

    return app


# -- server ------------------------------------------------------------------------------
class EdgeStrategy(Strategy):
    """Wraps a Flower strategy: over-selection, declines, deadlines, min clients, reply checks, reply log.

    Every usable reply passes :func:`~device_sim.fl.robust.check_update` against the arrays sent this
    round (keys, shapes, finite, optional norm bound) and its ``num-examples`` is clipped
    (:class:`~device_sim.fl.robust.ReplyGuard`); a non-finite aggregate skips the round.
    """

    def __init__(self, inner, clients_per_round: int, min_clients: int, log: list, guard=None):
        from .robust import ReplyGuard

        self.inner, self.k, self.min_clients, self.log = inner, clients_per_round, min_clients, log
        self.guard = guard or ReplyGuard()
        self._global: dict | None = None

    def configure_train(self, server_round, arrays, config, grid):
        self._global = {k: v.numpy() for k, v in arrays.items()}  # what the clients start from this round
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies: Iterable):
        replies = list(replies)
        usable = []
        row = {"round": server_round, "sampled": len(replies), "replies": []}
        for m in replies:
            entry = {"node": int(m.metadata.src_node_id), "error": m.has_error()}
            if not m.has_error():
                c = m.content
                met = dict(c["metrics"]) if "metrics" in c.metric_records else {}
                entry.update(metrics={k: float(v) for k, v in met.items()},
                             arrays={k: list(v.shape) for k, v in c["arrays"].items()} if "arrays" in c.array_records else {},
                             records=sorted(c.keys()), wire_bytes=wire_bytes(c))
                if "declined" not in met and "arrays" in c.array_records:
                    why = check_update({k: v.numpy() for k, v in c["arrays"].items()}, self._global, self.guard)
                    if why:
                        entry["rejected"] = why
                    else:
                        if "num-examples" in met:
                            c["metrics"]["num-examples"] = clip_examples(met["num-examples"], self.guard)
                        usable.append(m)
            row["replies"].append(entry)
        usable = usable[: self.k]  # the first k reports (over-selection)
        row["used"] = len(usable)
        row["rejected"] = sum("rejected" in e for e in row["replies"])
        row["skipped"] = len(usable) < self.min_clients
        self.log.append(row)
        if row["skipped"]:
            return None, None
        arrays, metrics = self.inner.aggregate_train(server_round, usable)
        if arrays is not None and not all(np.isfinite(v.numpy()).all() for v in arrays.values()):
            row["skipped"], row["reason"] = True, "non-finite aggregate"  # keep the model as it was
            return None, None
        return arrays, metrics

    def configure_evaluate(self, server_round, arrays, config, grid):
        return []

    def aggregate_evaluate(self, server_round, replies):
        return None

    def summary(self) -> None:
        self.inner.summary()


def server_main(spec: FLSpec, grid, context, evaluate_fn: Callable | None = None) -> dict:
    """Run all rounds; returns (and writes to ``spec.result_path``) the run log."""
    from flwr.app import ConfigRecord, MetricRecord
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

    from .robust import ReplyGuard, make_aggregator

    env = env_for(spec)
    n = len(env.users)  # the grid registers nodes asynchronously; FedAvg waits for min_available_nodes
    k_sample = min(n, math.ceil(spec.clients_per_round * spec.overselect))
    inner = make_aggregator(spec.aggregation, beta=spec.trim_beta, byzantine=spec.byzantine, server_lr=spec.server_lr,
                            fraction_train=k_sample / n,
                            min_train_nodes=k_sample, min_available_nodes=min(n, k_sample), fraction_evaluate=0.0)
    if spec.central_dp:
        inner = DifferentialPrivacyServerSideFixedClipping(inner, noise_multiplier=float(spec.central_dp["noise_multiplier"]),
                                                           clipping_norm=float(spec.central_dp["clipping_norm"]),
                                                           num_sampled_clients=spec.clients_per_round)
    log: list = []
    strategy = EdgeStrategy(inner, spec.clients_per_round, spec.min_clients, log,
                            ReplyGuard(max_examples=spec.max_examples, max_update_norm=spec.max_update_norm))
    evals: dict[int, dict] = {}

    def _eval(rnd, arrays):
        if evaluate_fn is None:
            return None
        t0 = time.time()
        res = evaluate_fn(rnd, _arrays_to_dict(arrays))
        evals[rnd] = {**res, "eval_s": time.time() - t0}
        return MetricRecord({k: float(v) for k, v in res.items() if isinstance(v, (int, float))})

    t0 = time.time()
    result = strategy.start(grid, initial_arrays=_dict_to_arrays(env.init),
                            num_rounds=spec.rounds, timeout=3600.0, train_config=ConfigRecord({}),
                            evaluate_fn=_eval if evaluate_fn else None)
    out = {"spec": json.loads(spec.to_json()), "nodes": n, "sampled_per_round": k_sample, "rounds": log,
           "evaluation": evals, "wall_s": time.time() - t0,
           "final_arrays": {k: v.numpy().tolist() for k, v in result.arrays.items()} if result.arrays else None}
    if spec.result_path:
        from server.io import write_json

        write_json(spec.result_path, out)
    return out


def make_server_app(spec: FLSpec, evaluate_fn: Callable | None = None, sink: dict | None = None):
    """The cloud side as a Flower ``ServerApp``; ``sink['result']`` receives the run log."""
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid, context):
        res = server_main(spec, grid, context, evaluate_fn)
        if sink is not None:
            sink["result"] = res

    return app
