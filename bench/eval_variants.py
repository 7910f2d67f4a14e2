"""Quality of saved variant checkpoints on the MovieLens-1M test split (full ranking, all users),
for runs where the checkpoints stay on the machine that trained them (the device tool returns
little data). Latency is measured separately, on the CPU, by ``bench/compression.py``.

    python bench/eval_variants.py --data .cache/bench_stage/ml-1m --out $OUT/eval.json DIR [DIR ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.compress import model_nbytes  # noqa: E402
from server.data.jsonl import load_rec_jsonl  # noqa: E402
from server.evaluate import evaluate_rec  # noqa: E402
from server.generative import GenerativeModel  # noqa: E402
from server.io import write_json  # noqa: E402
from server.pipeline import _GenRec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    d = Path(args.data)
    split = load_rec_jsonl(d / "items.jsonl.gz", d / "interactions.jsonl.gz", name="ml-1m").split()
    res = {}
    for p in args.dirs:
        gm = GenerativeModel.load(p, device=args.device)
        m = evaluate_rec({p: _GenRec(gm, 50)}, split, latency_queries=1)[p]
        gm.model.cpu()
        res[p] = {k: m[k] for k in ("recall@1", "recall@10", "ndcg@10", "mrr@10")}
        res[p].update(params=gm.model.n_params(), size_mb=model_nbytes(gm.model) / 1e6, compress=(gm.meta or {}).get("compress"))
        print(p, json.dumps({k: v for k, v in res[p].items() if k != "compress"}), flush=True)
        write_json(args.out, res)


if __name__ == "__main__":
    main()
