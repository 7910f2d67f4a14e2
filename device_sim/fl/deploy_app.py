"""The deployment harness's *probe* Flower app: a tiny Message-API FedAvg whose
result is known in advance, so a real SuperLink + SuperNodes run can be checked.

Each client answers the round's arrays with ``arrays + (partition_id + 1)`` and
``num-examples = partition_id + 1``; after one round from zeros the global arrays are
the FedAvg ``sum((p+1)**2) / sum(p+1)`` everywhere (:func:`expected_probe_value`). The
ServerApp writes the final arrays and the contributing partition ids to the JSON file
named by the run config ``result-path`` (see ``apps/probe/pyproject.toml``).

Components for ``flwr run`` (``apps/probe/pyproject.toml``)::

    serverapp = "device_sim.fl.deploy_app:server_app"
    clientapp = "device_sim.fl.deploy_app:client_app"

The SecAgg+ probe (``apps/secagg_probe/pyproject.toml``) runs
:func:`device_sim.fl.secagg.make_secagg_apps` over :func:`~device_sim.fl.secagg.synthetic_fit_fn`
updates on real SuperNodes (``secagg_server_app`` / ``secagg_client_app``) and writes the
:class:`~device_sim.fl.secagg.RoundResult` of every round to ``result-path``; the global
arrays start at :func:`secagg_probe_initial_arrays`.

>>> expected_probe_value(2)   # partitions 0 and 1: (1*1 + 2*2) / (1 + 2)
1.6666666666666667
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import numpy as np  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

from device_sim.fl.secagg import make_secagg_apps, synthetic_fit_fn  # noqa: E402

__all__ = [
    "server_app",
    "client_app",
    "expected_probe_value",
    "secagg_server_app",
    "secagg_client_app",
    "secagg_private_server_app",
    "secagg_private_client_app",
    "SECAGG_PRIVATE_CLIP",
    "secagg_probe_initial_arrays",
    "SECAGG_PROBE_FIT",
]

server_app = ServerApp()
client_app = ClientApp()


def expected_probe_value(num_partitions: int, num_rounds: int = 1) -> float:
    """Every element of the probe's global arrays after ``num_rounds`` from zeros."""
    w = np.arange(1, num_partitions + 1, dtype=np.float64)
    return float(num_rounds * (w * w).sum() / w.sum())


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    arrays = [a + (pid + 1) for a in msg.content["arrays"].to_numpy_ndarrays()]
    metrics = MetricRecord({"num-examples": pid + 1, "partition-id": pid})
    return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}), reply_to=msg)


def _collect(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Train-metrics 'aggregation' that keeps who contributed."""
    pids = sorted(int(m["partition-id"]) for r in records for m in r.metric_records.values())
    return MetricRecord({"partition-ids": pids, "num-replies": len(records)})


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    n = int(cfg["min-nodes"])
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n,
                      min_available_nodes=n, train_metrics_aggr_fn=_collect)
    size = int(cfg["array-size"])
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord([np.zeros(size)]),
                            num_rounds=int(cfg["num-server-rounds"]), timeout=float(cfg["round-timeout"]))
    if cfg.get("result-path"):
        out = {
            "arrays": [a.tolist() for a in result.arrays.to_numpy_ndarrays()],
            "rounds": {str(r): {"partition-ids": list(m["partition-ids"]), "num-replies": int(m["num-replies"])}
                       for r, m in result.train_metrics_clientapp.items()},
        }
        Path(str(cfg["result-path"])).write_text(json.dumps(out))


# ----------------------------------------------------------------------------- SecAgg+ probe

#: The SecAgg+ probe's local "training" (deterministic; the test recomputes it).
SECAGG_PROBE_FIT = synthetic_fit_fn(scale=0.1, max_examples=2)


def secagg_probe_initial_arrays() -> list[np.ndarray]:
    """The SecAgg+ probe's round-1 global arrays."""
    return [np.linspace(-1.0, 1.0, 12).reshape(3, 4), np.ones(5)]


# The client side of make_secagg_apps needs only the fit function and the ranges.
_, secagg_client_app = make_secagg_apps(SECAGG_PROBE_FIT, num_rounds=1, initial_arrays=secagg_probe_initial_arrays(),
                                        min_clients=2, max_weight=2)
secagg_server_app = ServerApp()


def _run_probe(grid: Grid, context: Context, **secagg) -> None:
    # one SecAgg+ probe server: make_secagg_apps over the probe updates, every round's result to `result-path`
    cfg = context.run_config
    results = []
    inner, _ = make_secagg_apps(
        SECAGG_PROBE_FIT, num_rounds=int(cfg["num-server-rounds"]), initial_arrays=secagg_probe_initial_arrays(),
        min_clients=int(cfg["min-nodes"]), max_weight=2, timeout=float(cfg["stage-timeout"]),
        on_aggregate=results.append, **secagg)
    inner(grid=grid, context=context)
    if cfg.get("result-path"):
        Path(str(cfg["result-path"])).write_text(json.dumps([
            {"server-round": r.server_round, "arrays": [a.tolist() for a in r.arrays], "partition-ids": list(r.partition_ids),
             "num-failures": r.num_failures, "secure": r.secure, "noise-std": r.noise_std, "skipped": r.skipped,
             "reason": r.reason} for r in results]))


@secagg_server_app.main()
def _secagg_main(grid: Grid, context: Context) -> None:
    _run_probe(grid, context)


# -- robust + secure + private (``apps/secagg_private_probe``): the same probe updates under SecAgg+ with every client
# clipping to SECAGG_PRIVATE_CLIP before masking and weighing the same, the server's aggregate check, and client-level
# DP noise of std z * C / m on the unmasked mean (run config ``noise-multiplier``); the round reports the noise std.
SECAGG_PRIVATE_CLIP = 0.3  # below the probe updates' norms (<= 0.1 * sqrt(17)), so clipping acts

_, secagg_private_client_app = make_secagg_apps(SECAGG_PROBE_FIT, num_rounds=1, initial_arrays=secagg_probe_initial_arrays(),
                                                min_clients=2, max_weight=2, max_update_norm=SECAGG_PRIVATE_CLIP,
                                                noise_multiplier=1.0)  # client side: clip + equal weights (z is the server's)
secagg_private_server_app = ServerApp()


@secagg_private_server_app.main()
def _secagg_private_main(grid: Grid, context: Context) -> None:
    _run_probe(grid, context, max_update_norm=SECAGG_PRIVATE_CLIP, noise_multiplier=float(context.run_config["noise-multiplier"]))


# -- the real personalization apps (device_sim.fl.flower) on real SuperNodes -----------------
# ``apps/personalize/pyproject.toml``; the run config ``spec-path`` names an FLSpec JSON file.
def _personalize_spec(context: Context):
    from device_sim.fl.flower import FLSpec

    return FLSpec.from_json(Path(str(context.run_config["spec-path"])).read_text())


personalize_client_app = ClientApp()


@personalize_client_app.train()
def _personalize_train(msg: Message, context: Context) -> Message:
    from device_sim.fl.flower import client_train

    return client_train(_personalize_spec(context), msg, context)


personalize_server_app = ServerApp()


@personalize_server_app.main()
def _personalize_main(grid: Grid, context: Context) -> None:
    from device_sim.fl.flower import server_main

    server_main(_personalize_spec(context), grid, context)
