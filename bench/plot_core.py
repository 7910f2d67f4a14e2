"""Plot bench/results/core.json -> bench/results/core.png (quality and latency per method)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def panels(path: Path, key: str, width: float, height: float):
    """``(results, set names, figure, axes)``: one panel per result set of ``path`` (a dict holding ``key``)."""
    res = json.loads(Path(path).read_text())
    sets = [k for k in res if isinstance(res[k], dict) and key in res[k]]
    fig, axes = plt.subplots(1, len(sets), figsize=(width * len(sets), height), squeeze=False)
    return res, sets, fig, axes[0]


def save(fig, path: Path) -> Path:
    """Save ``fig`` beside ``path`` as PNG (the bench's plot convention) and return that path."""
    fig.tight_layout()
    out = Path(path).with_suffix(".png")
    fig.savefig(out, dpi=120)
    return out


def main(path: Path = RESULTS / "core.json") -> Path:
    res = json.loads(path.read_text())
    sets = [k for k in ("movielens-1m", "bible") if k in res]
    fig, axes = plt.subplots(1, 2 * len(sets), figsize=(6 * len(sets) * 2, 4))
    axes = list(axes) if len(sets) * 2 > 1 else [axes]
    for n, key in enumerate(sets):
        m = res[key]["methods"]
        names = list(m)
        ax = axes[2 * n]
        w = 0.38
        xs = range(len(names))
        ax.bar([x - w / 2 for x in xs], [m[k]["recall@10"] for k in names], w, label="Recall@10")
        ax.bar([x + w / 2 for x in xs], [m[k]["ndcg@10"] for k in names], w, label="NDCG@10")
        ax.set_xticks(list(xs), names, rotation=15)
        ax.set_title(f"{key}: quality (test, full ranking)")
        ax.legend()
        ax = axes[2 * n + 1]
        ax.bar(names, [m[k]["p50_ms"] for k in names], color="gray")
        ax.set_yscale("log")
        ax.set_ylabel("p50 ms per query, 1 thread")
        ax.set_title(f"{key}: latency")
        ax.tick_params(axis="x", rotation=15)
    fig.suptitle(f"edge-gr core benchmark - {res.get('date')} - {res.get('machine') or res[sets[0]].get('machine')}", fontsize=9)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS / "core.json"))
