"""Canary rollout over the simulated MovieLens-100k fleet (issue #6): a good update reaches 100%, a bad one is rolled back.

    .venv/bin/python bench/rollout.py [--epochs 4] [--requests 2]

1. trains a small recommender on ML-100k (leave-one-out training histories) and publishes it as ``v1.0``;
2. a *good* candidate: a LoRA (+ replay) fine-tune of it on the same training windows, published as a delta ``v1.1``;
3. a *bad* candidate: ``v1.0`` with Gaussian noise (3x each tensor's std) on every weight, published as ``v1.2``;
4. rolls each out 5% -> 20% -> 50% -> 100% over the 943-device fleet (one device per user, tiers
   low/mid/high/tablet) against ``v1.0``, with the automatic rollback checks at every stage.

Writes ``bench/results/rollout.{json,md}``; the registry's pointer ends on ``v1.1``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from device_sim.fleet import Fleet  # noqa: E402
from device_sim.rollout_sim import model_search_fn, simulate_rollout  # noqa: E402
from server.data.movielens import load_movielens  # noqa: E402
from server.incremental import UpdateConfig, update_model  # noqa: E402
from server.model import GRConfig  # noqa: E402
from server.registry import Registry, state_from_torch  # noqa: E402
from server.rollout import report_markdown  # noqa: E402
from server.semantic_ids import build_ids, collab_embeddings  # noqa: E402
from server.train import TrainConfig, rec_windows, train_rec  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--requests", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "rollout"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = load_movielens("ml-100k")
    split = data.split()
    items = [i.id for i in data.items]
    ids = build_ids(items, collab_embeddings(list(split.train.values()), items, dim=32), levels=(32, 32), seed=0)
    t0 = time.perf_counter()
    gm, _ = train_rec(split, data.items, ids, GRConfig(d_model=48, n_heads=2, n_enc_layers=1, n_dec_layers=1, max_len=30),
                      TrainConfig(epochs=args.epochs, batch_size=64, lr=3e-3, eval_queries=0, progress=False, threads=1))
    train_s = time.perf_counter() - t0
    row = {it: i + 1 for i, it in enumerate(ids.items)}
    w = rec_windows([[row[i] for i in h] for h in split.train.values()], 30)
    rng = np.random.default_rng(0)
    sub = w[rng.permutation(len(w))[:1024]]
    make = lambda epoch: [(torch.from_numpy(sub[s:s + 64]),) for s in range(0, len(sub), 64)]  # noqa: E731
    good, info = update_model(gm, make, UpdateConfig(method="lora", epochs=1, lr=5e-4, lora_r=4, threads=1), replay_batches=make)
    bad = GenerativeModel_with_noise(gm, 3.0)
    res = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
           "machine": f"{platform.machine()} {os.cpu_count()} cores (shared), torch {torch.__version__} CPU, 1 thread",
           "command": "python bench/rollout.py " + " ".join(argv if argv is not None else sys.argv[1:]), "train_seconds": train_s}
    md = []
    with tempfile.TemporaryDirectory() as d:
        reg = Registry(Path(d) / "reg")
        v10 = reg.publish(state_from_torch(gm.model.state_dict()), full=True, activate=True, note="base")
        v11 = reg.publish(state_from_torch(good.model.state_dict()), lora=info["lora"], note="LoRA update")
        v12 = reg.publish(state_from_torch(bad.model.state_dict()), parent="v1.0", note="deliberately bad: weights + 3 std noise")
        res["versions"] = {m.version: {"kind": m.kind, "bytes": m.size, "note": m.note} for m in (v10, v11, v12)}
        fleet = Fleet.from_recdata(data, seed=0)
        base_fn = model_search_fn(gm, beam=20)
        for name, m, cand in (("good", v11, good), ("bad", v12, bad)):
            t = time.perf_counter()
            rep = simulate_rollout(Fleet.from_recdata(data, seed=0), base_fn, model_search_fn(cand, beam=20),
                                   requests_per_device=args.requests, baseline_name="v1.0", candidate_name=f"{m.version} ({name})")
            if rep.outcome == "completed":
                reg.set_current(m.version, reason="rollout completed")
            res[name] = rep.to_dict() | {"seconds": time.perf_counter() - t, "registry_current_after": reg.current()}
            md.append(report_markdown(rep) + f"\nRegistry pointer after this rollout: `{reg.current()}`.\n")
            print(md[-1])
        res["fleet_tiers"] = {t: sum(1 for v in fleet.tiers().values() if v == t) for t in sorted(set(fleet.tiers().values()))}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=float))
    head = (f"# Canary rollout on the simulated ML-100k fleet - {res['date']}\n\nMachine: {res['machine']}. Command: `{res['command']}`. "
            f"Fleet: {len(fleet)} devices {res['fleet_tiers']}; {args.requests} requests per device per stage; latency = host CPU "
            "time of the search x the tier's speed factor.\n\n")
    out.with_suffix(".md").write_text(head + "\n".join(md))
    return 0


def GenerativeModel_with_noise(gm, scale: float):  # noqa: N802 - reads like the thing it returns
    import copy

    from server.generative import GenerativeModel

    m = copy.deepcopy(gm.model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.std().clamp_min(1e-3))
    return GenerativeModel(m, gm.ids, gm.items, gm.tokenizer, gm.popularity, dict(gm.meta))


if __name__ == "__main__":
    raise SystemExit(main())
