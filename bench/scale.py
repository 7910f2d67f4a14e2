"""Sharded serving on Ray Serve: QPS and latency per replica / shard count, hop overheads, recall of the served
path, and catalogue-update propagation through NATS JetStream (issue "Scale out", item 7).

One Ray instance on loopback; for each configuration the Serve application is redeployed and a closed loop
of ``--concurrency`` HTTP clients (threads in this process, on the same cores) sends ``--queries``
validation inputs. Everything runs on this machine's 2 cores, so more replicas or shards cannot add
throughput beyond what 2 cores give: the table shows where it saturates and what each hop costs.

* ``in_process``: the unsharded eager model, one query at a time, in this process (the floor).
* ``handle``: a Serve handle straight to the one shard (1 shard x 1 replica): + the Ray hop.
* ``http``: HTTP -> router (first decoder step, routing, merge) -> shard, one request at a time.
* ``configs``: shards x replicas at ``--concurrency``: QPS, p50 / p99, and ``recall_ratio`` = Recall@10 of the
  served answers / the unsharded in-process model's on the same inputs (prefix routing; one scatter row).
* ``propagation``: append -> every replica applied, on a 3-node JetStream cluster with 2 replica consumers.

    .venv/bin/python bench/scale.py --checkpoint .cache/gpu_build/rec-teacher --data .cache/gpu_build/ml-1m \\
        --task rec [--queries 200] [--concurrency 4] [--updates 200]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.core import cpu_model  # noqa: E402
from server.io import write_json  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CONFIGS = "1x1,1x2,1x4,2x1,4x1,4x1:scatter"


def parse_configs(s: str) -> list[tuple[int, int, str, int | None]]:
    """``SHARDSxREPLICAS[:scatter|:prefixF]``, comma-separated -> (shards, replicas, strategy, max fan-out).

    >>> parse_configs("1x2,8x1:prefix4,4x1:scatter")
    [(1, 2, 'prefix', None), (8, 1, 'prefix', 4), (4, 1, 'scatter', None)]
    """
    out = []
    for part in s.split(","):
        size, _, strat = part.partition(":")
        n, r = (int(x) for x in size.split("x"))
        fan = int(strat[6:]) if strat.startswith("prefix") and strat[6:] else None
        out.append((n, r, "scatter" if strat == "scatter" else "prefix", fan))
    return out


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "n": len(a)}


def _body(task: str, q) -> dict:
    return {"history": list(q)} if task == "rec" else {"query": q}


def closed_loop(url: str, task: str, queries: list, concurrency: int) -> tuple[dict, list]:
    """``concurrency`` clients, each sending its share of ``queries`` back to back; QPS over the wall time."""
    import httpx

    lat: list[float] = []
    answers: list = [None] * len(queries)
    errors = [0]
    lock = threading.Lock()

    def client(idx: list[int]) -> None:
        with httpx.Client(timeout=120) as c:
            for i in idx:
                t0 = time.perf_counter()
                r = c.post(url + "/search", json={**_body(task, queries[i]), "k": 10})
                dt = (time.perf_counter() - t0) * 1000
                with lock:
                    if r.status_code == 200:
                        lat.append(dt)
                        answers[i] = [x["item_id"] for x in r.json()["items"]]
                    else:
                        errors[0] += 1

    parts = [list(range(c, len(queries), concurrency)) for c in range(concurrency)]
    threads = [threading.Thread(target=client, args=(p,)) for p in parts]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {**_pct(lat), "qps": len(lat) / wall, "errors": errors[0], "concurrency": concurrency}, answers


def recall(answers: list, rel: list[set], k: int = 10) -> float:
    return float(np.mean([len(set(a[:k]) & r) / len(r) if a is not None else 0.0 for a, r in zip(answers, rel)]))


def propagation(gm, n: int) -> dict:
    """Append -> both replicas applied, on a 3-node JetStream stream (replicas=3), the writer leased in a
    3-member etcd cluster; one update in flight at a time."""
    import tempfile

    from edge_gr.ids import SemanticIds
    from server.shard.engines import EtcdCluster, NatsCluster
    from server.shard.log import CatalogueLog, CatalogueReplica, ReplicaState, ShardWriter, measure_propagation
    from server.shard.meta import ShardMeta

    ids = gm.ids
    base = SemanticIds(list(ids.items), ids.codes, ids.levels, {})
    with tempfile.TemporaryDirectory() as tmp, EtcdCluster(3, Path(tmp) / "etcd") as etcd, NatsCluster(3, Path(tmp) / "nats") as nc:
        with ShardMeta(etcd.endpoints) as meta, CatalogueLog(nc.urls) as log:
            log.ensure_stream(replicas=3)
            lock = meta.acquire_writer(0, "bench-writer", ttl=30)
            w = ShardWriter(log, 0, base, np.zeros((len(base), 1)), token=lock.token, writer_id="bench-writer")
            reps = [CatalogueReplica(nc.urls, 0, f"bench-{r}", state=ReplicaState.from_ids(0, base)) for r in range(2)]
            try:
                out = measure_propagation(w, reps, n)
            finally:
                for r in reps:
                    r.close()
                lock.release()
    return {**out, "setup": "3 etcd members + 3 nats-server (JetStream, stream replicas=3) + 2 replica consumers, all on this host"}


def plot(path: Path) -> Path:
    from bench.plot_core import save
    import matplotlib.pyplot as plt

    res = json.loads(path.read_text())
    tasks = [t for t in ("rec", "retrieval") if t in res]
    fig, axes = plt.subplots(len(tasks), 3, figsize=(15, 4.2 * len(tasks)), squeeze=False)
    for ax_row, t in zip(axes, tasks):
        rows = res[t]["configs"]
        labels = [f"{r['shards']}s x {r['replicas']}r\n{r['strategy']}{r.get('max_fanout') or ''}" for r in rows]
        x = np.arange(len(rows))
        ax_row[0].bar(labels, [r["qps"] for r in rows])
        ax_row[0].set(title=f"{t}: QPS at concurrency {rows[0]['concurrency']} ({res['cpu']}, {res['cores']} cores)", ylabel="requests / s")
        ax_row[1].bar(x - 0.2, [r["p50_ms"] for r in rows], 0.4, label="p50")
        ax_row[1].bar(x + 0.2, [r["p99_ms"] for r in rows], 0.4, label="p99")
        ax_row[1].axhline(res[t]["in_process"]["p50_ms"], color="gray", ls=":", label="in-process p50, unsharded")
        ax_row[1].set_xticks(x, labels)
        ax_row[1].set(title=f"{t}: latency per request (HTTP, loaded)", ylabel="ms")
        ax_row[1].legend(fontsize=7)
        ax_row[2].bar(labels, [r["recall_ratio"] for r in rows])
        ax_row[2].axhline(0.98, color="red", ls="--", lw=1)
        ax_row[2].set(title=f"{t}: Recall@10 of the served path / unsharded", ylim=(0.8, 1.05))
        for ax in ax_row:
            ax.tick_params(axis="x", labelsize=7)
    return save(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--task", choices=["rec", "retrieval"], required=True)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--beam", type=int, default=20)
    ap.add_argument("--updates", type=int, default=200, help="catalogue updates for the propagation delay (0: skip)")
    ap.add_argument("--configs", default=CONFIGS, help="SHARDSxREPLICAS[:scatter|:prefixF], comma-separated")
    ap.add_argument("--out", default=str(RESULTS / "scale.json"))
    a = ap.parse_args()
    import torch
    from tqdm import tqdm

    from server.build import BuildSpec, _load, _presets, validation_inputs
    from server.generative import GenerativeModel
    from server.shard.plan import semantic_plan
    from server.shard.serving import build_app, start

    torch.set_num_threads(1)
    gm = GenerativeModel.load(a.checkpoint)
    spec = BuildSpec(task=a.task, data=a.data, out="", preset="full", device="cpu", progress=False)
    inputs, rel = validation_inputs(a.task, _load(spec, _presets(spec)), a.queries)
    inputs, rel = list(inputs), [set(r) for r in rel]
    res = {"checkpoint": a.checkpoint, "queries": len(inputs), "beam": a.beam}

    lat = []
    base = []
    for q in tqdm(inputs, desc="in-process"):
        t0 = time.perf_counter()
        base.append([i for i, _ in gm.search(q, 10, beam=a.beam)])
        lat.append((time.perf_counter() - t0) * 1000)
    r0 = recall(base, rel)
    res["in_process"] = {**_pct(lat), "recall@10": r0}

    from ray import serve

    port = _port()
    svc = start(a.checkpoint, semantic_plan(gm.ids, 1), port=port, beam=a.beam)
    res["startup_s"] = svc.started_s
    try:
        h = serve.get_deployment_handle("shard-0", app_name="edge-gr")
        lat = []
        for q in inputs[:100]:
            t0 = time.perf_counter()
            h.search.remote([q], 10).result()
            lat.append((time.perf_counter() - t0) * 1000)
        res["handle"] = _pct(lat)
        one, _ = closed_loop(svc.url, a.task, inputs[:100], 1)
        res["http"] = one
        res["hop_overhead_ms"] = {"ray_handle_p50": res["handle"]["p50_ms"] - res["in_process"]["p50_ms"],
                                  "http_router_p50": res["http"]["p50_ms"] - res["handle"]["p50_ms"],
                                  "note": "http_router includes the router's first decoder step (routing) and the merge"}
        rows = []
        for shards, replicas, strategy, fan in parse_configs(a.configs):
            plan = semantic_plan(gm.ids, shards)
            t0 = time.perf_counter()
            serve.run(build_app(a.checkpoint, plan, replicas=replicas, beam=a.beam, strategy=strategy, max_fanout=fan),
                      name="edge-gr", route_prefix="/")
            deploy = time.perf_counter() - t0
            closed_loop(svc.url, a.task, inputs[:8], a.concurrency)  # warm-up
            m, answers = closed_loop(svc.url, a.task, inputs, a.concurrency)
            rr = recall(answers, rel)
            rows.append({"shards": shards, "replicas": replicas, "strategy": strategy, "max_fanout": fan, **m, "recall@10": rr,
                         "recall_ratio": rr / r0 if r0 else None, "deploy_s": deploy,
                         "same_top10_as_unsharded": float(np.mean([x == y for x, y in zip(answers, base)]))})
            print(f"{shards} shards x {replicas} replicas {strategy:8} fan-out {fan or 'beam'} QPS {m['qps']:.1f}  p50 {m['p50_ms']:.1f}  p99 {m['p99_ms']:.1f} ms  "
                  f"recall ratio {rows[-1]['recall_ratio']:.3f}  errors {m['errors']}", flush=True)
        res["configs"] = rows
    finally:
        svc.shutdown()
    if a.updates:
        res["propagation"] = propagation(gm, a.updates)
        print(f"propagation over {a.updates} updates: p50 {res['propagation']['p50_ms']:.1f} ms, p99 {res['propagation']['p99_ms']:.1f} ms")
    doc = {"date": datetime.date.today().isoformat(), "cpu": cpu_model(), "cores": os.cpu_count(),
           "protocol": __doc__.split("\n\n")[1].replace("\n", " ")}
    old = Path(a.out)
    if old.is_file():  # one task per run: keep the other task's measured rows
        doc = {**{k: v for k, v in json.loads(old.read_text()).items() if isinstance(v, dict) and "configs" in v}, **doc}
    doc[a.task] = res
    out = write_json(old, doc)
    print(f"wrote {out} and {plot(out)}")


if __name__ == "__main__":
    main()
