"""A trained generative retriever/recommender: model + semantic IDs (+ tokenizer), saved as one folder.

Loading rebuilds the skeleton from ``config``, applies the recorded structural ``transforms``
(e.g. grouped FFN layers of a compressed student, :mod:`server.compress.transforms`), then
reads the weights.

Folder layout (``format_version`` checked on load)::

    ckpt/
      edge_gr_model.json     {"format": "edge-gr-checkpoint", "version": 1, "config": {...}, "task": ...,
                              "transforms": [...], "meta": {...}}
      model.safetensors      fp32 weights
      recipe.json            optional: the quantization recipe the exporters apply (server.compress.recipe)
      ids.json               semantic IDs (edge_gr.ids format)
      tokenizer.json         retrieval only
      items.jsonl            the catalogue (id, text, meta)
      popularity.json        rec only: fallback ranking for empty / unknown histories

It implements :class:`edge_gr.search.Searcher`, as the device runtime does: the same arguments
and the same :class:`~edge_gr.search.Hit` (which unpacks as ``(item_id, score)``).

>>> gm = GenerativeModel.load("path/to/ckpt")                # doctest: +SKIP
>>> gm.search("in the beginning was the word", k=3)          # doctest: +SKIP
[Hit(item_id='John.1.1', score=-0.02, title='In the beginning was the Word, ...'), ...]
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edge_gr.decode import beam_search
from edge_gr.errors import EdgeGRError, FormatError, InputError
from edge_gr.ids import SemanticIds
from edge_gr.search import DEFAULT_BEAM, Hit
from edge_gr.validate import check_batch_size, check_beam, check_flag, check_k, check_queries

from .data.base import Item
from .data.jsonl import read_items, write_items
from .model import GenerativeRetriever, GRConfig
from .text import encode

__all__ = ["GenerativeModel", "CKPT_FORMAT", "CKPT_VERSION"]

CKPT_FORMAT, CKPT_VERSION = "edge-gr-checkpoint", 1


_LIMITS = {"d_model": 16384, "n_heads": 256, "n_enc_layers": 128, "n_dec_layers": 128, "ffn_mult": 64, "max_len": 65536,
           "n_items": 100_000_000, "vocab_size": 10_000_000}


def _check_config_size(cfg: GRConfig, weights: Path, hfile: Path) -> None:
    """Refuse a header whose model would be far larger than its weights file (a damaged or hostile header would
    otherwise make the skeleton allocate gigabytes before the weights are read)."""
    hint = "retrain with `edge-gr train`, or restore the checkpoint's edge_gr_model.json"
    for name, hi in _LIMITS.items():
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or not (0 <= v <= hi):
            raise FormatError(f"{hfile}: config {name}={v!r:.40} is outside 0..{hi}", hint=hint)
    if cfg.d_model < 1 or cfg.n_heads < 1 or cfg.d_model % cfg.n_heads or len(cfg.levels) > 16 or \
            any(not isinstance(c, int) or not 1 <= c <= 1 << 20 for c in cfg.levels):
        raise FormatError(f"{hfile}: config d_model={cfg.d_model} / n_heads={cfg.n_heads} / levels={list(cfg.levels)[:17]} "
                          f"is not a model this edge-gr builds", hint=hint)
    d, layers = cfg.d_model, cfg.n_enc_layers + 2 * cfg.n_dec_layers
    est = (cfg.n_items + cfg.vocab_size + sum(cfg.levels) * 2 + cfg.max_len) * d + layers * (4 + 2 * cfg.ffn_mult) * d * d
    try:
        have = weights.stat().st_size
    except OSError:
        return  # the weights' own read reports a missing file
    if 4 * est > 16 * have + (256 << 20):  # generous: pruned / grouped models are smaller than this estimate
        raise FormatError(f"{hfile}: its config describes a model of ~{4 * est / 2**20:,.0f} MB, but {weights.name} has "
                          f"{have / 2**20:,.1f} MB", hint=hint)


class GenerativeModel:
    """The trained model plus everything needed to turn its output into catalogue ids."""

    def __init__(self, model: GenerativeRetriever, ids: SemanticIds, items: list[Item], tokenizer=None,
                 popularity: list[str] | None = None, meta: dict | None = None, recipe=None):
        self.model, self.ids, self.items, self.tokenizer = model.eval(), ids, items, tokenizer
        self.popularity = popularity or []
        self.meta = meta or {}
        self.recipe = recipe  # server.compress.recipe.QuantRecipe | None: how the exporters should quantize it
        self.task = model.cfg.task
        if self.task == "retrieval" and tokenizer is None:
            raise FormatError("a retrieval model needs its tokenizer", hint="retrain or restore tokenizer.json")

    # -- decoding ------------------------------------------------------------
    @torch.no_grad()
    def _decode(self, src: torch.Tensor, k: int, beam: int, trie=None) -> tuple[np.ndarray, np.ndarray]:
        m = self.model
        dev = next(m.parameters()).device
        mem, pad = m.encode(src.to(dev))
        offsets = m.offsets

        def step(prefix: np.ndarray) -> np.ndarray:
            p = torch.from_numpy(prefix).to(dev)
            l = p.shape[-1]
            inp = torch.cat([p.new_zeros(*p.shape[:2], 1), p + offsets[:l] + 1], -1)  # (N, B, l+1)
            logits = m.decode(mem, pad, inp)[:, :, -1]  # (N, B, V)
            return m.level_logprobs(logits, l).cpu().numpy()

        return beam_search(step, self.ids.trie() if trie is None else trie, n=src.shape[0], beam=max(beam, k), k=k)

    @torch.no_grad()
    def first_level(self, src: torch.Tensor) -> np.ndarray:
        """Log-probabilities of the first ID level ``(N, levels[0])`` (a shard router's one decoder step)."""
        m = self.model
        dev = next(m.parameters()).device
        mem, pad = m.encode(src.to(dev))
        logits = m.decode(mem, pad, torch.zeros(src.shape[0], 1, 1, dtype=torch.long, device=dev))[:, :, -1]
        return m.level_logprobs(logits, 0)[:, 0].cpu().numpy()

    def source(self, queries: Sequence) -> torch.Tensor:
        """The encoder input of queries (texts for retrieval, histories for rec), as search builds it (checked by
        :func:`edge_gr.validate.check_queries`: the shard router calls this directly)."""
        queries = check_queries(queries, self.task)
        if self.task == "rec":
            return self._history_tensor([list(q) for q in queries])
        return torch.from_numpy(encode(self.tokenizer, list(queries), self.model.cfg.max_len))

    def _history_tensor(self, histories: Sequence[Sequence[str]]) -> torch.Tensor:
        S = self.model.cfg.max_len
        out = np.zeros((len(histories), S), dtype=np.int64)
        for r, h in enumerate(histories):
            rows = [self.ids._index[i] + 1 for i in h if i in self.ids._index][-S:]
            if rows:
                out[r, S - len(rows):] = rows
        return torch.from_numpy(out)

    def rank(self, histories: Sequence[Sequence[str]], k: int = 10, *, beam: int = DEFAULT_BEAM, exclude_seen: bool = False,
             batch_size: int = 128) -> list[list[tuple[str, float]]]:
        """Rec's low-level ranking: ``(item id, log-probability)`` per history (items unknown to the catalogue are skipped).

        A history with no known item gets the popularity ranking (score ``nan``), the
        documented fallback for new users. Arguments are checked by :mod:`edge_gr.validate`.
        """
        if self.task != "rec":
            raise InputError("this is a retrieval model", hint="call search(text) instead of rank(history)")
        histories = check_queries(histories, "rec")
        k = check_k(k, len(self.ids))
        return self._rank(histories, k, check_beam(beam, k), check_flag(exclude_seen), check_batch_size(batch_size))

    def _rank(self, histories: list[list[str]], k: int, beam: int, exclude_seen: bool, batch_size: int) -> list[list[tuple[str, float]]]:
        results: list[list[tuple[str, float]]] = []
        # With exclude_seen the beam's top-`beam` IDs are decoded and seen items dropped
        # from them (a user with many seen items among those may get fewer than k back).
        want = min(beam if exclude_seen else k, len(self.ids))
        for s in range(0, len(histories), batch_size):
            chunk = histories[s:s + batch_size]
            src = self._history_tensor(chunk)
            items, scores = self._decode(src, want, max(beam, want))
            for r, h in enumerate(chunk):
                seen = set(h) if exclude_seen else set()
                if not (src[r] != 0).any():
                    results.append([(i, float("nan")) for i in self.popularity if i not in seen][:k])
                    continue
                row = [(self.ids.items[i], float(sc)) for i, sc in zip(items[r], scores[r]) if i >= 0 and self.ids.items[i] not in seen]
                results.append(row[:k])
        return results

    def search(self, query: str | Sequence[str], k: int = 10, *, beam: int | None = None, exclude_seen: bool = False) -> list[Hit]:
        """Top-``k`` hits (catalogue id, log-probability, title), best first (:class:`edge_gr.search.Searcher`).

        ``query`` is text for a retrieval model, a list of item ids (the history) for a
        recommender. Bad input raises :class:`InputError` with what to do (:mod:`edge_gr.validate`,
        the device runtime's checks: ``1 <= k <= MAX_K``, ``1 <= beam <= MAX_BEAM``, ...).
        """
        return self.search_many([query], k, beam=beam, exclude_seen=exclude_seen)[0]

    def search_many(self, queries: Sequence[str | Sequence[str]], k: int = 10, *, beam: int | None = None,
                    exclude_seen: bool = False, batch_size: int = 256) -> list[list[Hit]]:
        """Batched :meth:`search`: texts for a retrieval model, histories for a recommender (a list; an iterator is read once)."""
        queries = check_queries(queries, self.task)
        k = check_k(k, len(self.ids))
        beam, exclude_seen, batch_size = check_beam(beam, k), check_flag(exclude_seen), check_batch_size(batch_size)
        if self.task == "rec":
            ranked = self._rank(queries, k, beam, exclude_seen, batch_size)
        else:
            ranked = self._rank_texts(queries, k, beam, batch_size)
        titles = self._titles()
        return [[Hit(i, s, titles.get(i, "")) for i, s in row] for row in ranked]

    def rank_texts(self, texts: Sequence[str], k: int = 10, *, beam: int = DEFAULT_BEAM, batch_size: int = 256) -> list[list[tuple[str, float]]]:
        """Retrieval's low-level ranking: ``(doc id, log-probability)`` per text (what evaluation reads)."""
        if self.task != "retrieval":
            raise InputError("this is a recommender", hint="call rank(histories) or search(history)")
        texts = check_queries(texts, "retrieval")
        k = check_k(k, len(self.ids))
        return self._rank_texts(texts, k, check_beam(beam, k), check_batch_size(batch_size))

    def _rank_texts(self, texts: list[str], k: int, beam: int, batch_size: int) -> list[list[tuple[str, float]]]:
        out = []
        for s in range(0, len(texts), batch_size):
            src = torch.from_numpy(encode(self.tokenizer, list(texts[s:s + batch_size]), self.model.cfg.max_len))
            items, scores = self._decode(src, k, beam)
            out += [[(self.ids.items[i], float(sc)) for i, sc in zip(ir, sr) if i >= 0] for ir, sr in zip(items, scores)]
        return out

    def _titles(self) -> dict[str, str]:
        if getattr(self, "_title_of", None) is None or len(self._title_of) != len(self.items):
            self._title_of = {i.id: i.text for i in self.items}
        return self._title_of

    # -- persistence -----------------------------------------------------------
    def size_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.state_dict().values())

    def save(self, path: str | os.PathLike) -> Path:
        """Write the folder atomically: build it beside the target, then rename."""
        from safetensors.torch import save_file

        from .compress.transforms import describe

        path = Path(path)
        transforms = describe(self.model)  # before any file is written: a fake-quant model is refused here
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + ".tmp"))
        try:
            header = {"format": CKPT_FORMAT, "version": CKPT_VERSION, "task": self.task,
                      "config": self.model.cfg.to_dict(), "transforms": transforms, "meta": self.meta}
            (tmp / "edge_gr_model.json").write_text(json.dumps(header, indent=1))
            sd = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
            save_file(sd, str(tmp / "model.safetensors"))
            self.ids.save(tmp / "ids.json")
            write_items(tmp / "items.jsonl", self.items)
            if self.tokenizer is not None:
                self.tokenizer.save(str(tmp / "tokenizer.json"))
            if self.popularity:
                (tmp / "popularity.json").write_text(json.dumps(self.popularity))
            if self.recipe is not None:
                self.recipe.save(tmp)
            if path.exists():
                old = path.with_name(path.name + ".old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> "GenerativeModel":
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        path = Path(path)
        hfile = path / "edge_gr_model.json"
        if not hfile.is_file():
            raise FormatError(f"{path} is not an edge-gr checkpoint (no edge_gr_model.json)", hint="train one with `edge-gr train`")
        retrain = "retrain with `edge-gr train`"
        header = _read_json(hfile, retrain)
        if not isinstance(header, dict) or header.get("format") != CKPT_FORMAT or header.get("version") != CKPT_VERSION:
            got = f"format {header.get('format')!r:.40} v{header.get('version')!r:.20}" if isinstance(header, dict) else f"a JSON {type(header).__name__}"
            raise FormatError(f"{hfile}: {got}, expected {CKPT_FORMAT} v{CKPT_VERSION}", hint="retrain with this version's `edge-gr train`")
        from .compress.recipe import QuantRecipe
        from .compress.transforms import apply_transforms

        if not isinstance(header.get("config"), dict):
            raise FormatError(f"{hfile}: 'config' is missing or not an object", hint=retrain)
        cfg_d = dict(header["config"])
        if cfg_d.pop("quant", None) or cfg_d.pop("grouped", None):
            raise FormatError(f"{path} is a fake-quantized / grouped checkpoint of an older edge-gr",
                              hint="re-run `edge-gr compress`: it now writes fp32 checkpoints plus recipe.json")
        try:
            cfg = GRConfig.from_dict(cfg_d)
        except (KeyError, TypeError, ValueError) as e:  # a field missing, unknown or of the wrong type
            if isinstance(e, EdgeGRError):
                raise
            raise FormatError(f"{hfile}: 'config' is not a model config of this edge-gr ({type(e).__name__}: {str(e)[:120]})",
                              hint=retrain) from None
        try:
            ids = SemanticIds.load(path / "ids.json")
        except (KeyError, TypeError, ValueError, RecursionError) as e:  # a damaged file SemanticIds' own checks let through
            raise FormatError(f"{path / 'ids.json'} is damaged ({type(e).__name__}: {str(e)[:120]})", hint=retrain) from None
        _check_config_size(cfg, path / "model.safetensors", hfile)  # before the skeleton allocates anything
        codes = torch.from_numpy(ids.codes) if cfg.task == "rec" else None
        transforms = header.get("transforms") or []
        if not isinstance(transforms, list):
            raise FormatError(f"{hfile}: 'transforms' must be a list", hint=retrain)
        model = apply_transforms(GenerativeRetriever(cfg, codes=codes), transforms)
        try:
            missing, unexpected = model.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
        except Exception as e:  # safetensors raises its own error types for truncated files
            raise FormatError(f"{path / 'model.safetensors'} cannot be read ({e})", hint="retrain with `edge-gr train`") from None
        if [m for m in missing if m != "item_codes"] or unexpected:
            raise FormatError(f"{path / 'model.safetensors'} does not match its config", hint="retrain with `edge-gr train`")
        tok = None
        if (path / "tokenizer.json").is_file():
            try:
                tok = Tokenizer.from_file(str(path / "tokenizer.json"))
            except Exception as e:  # the tokenizers library raises plain Exception for a bad file
                raise FormatError(f"{path / 'tokenizer.json'} is not a tokenizer ({str(e)[:120]})", hint=retrain) from None
        pop = _read_json(path / "popularity.json", retrain) if (path / "popularity.json").is_file() else None
        if pop is not None and not (isinstance(pop, list) and all(isinstance(i, str) for i in pop)):
            raise FormatError(f"{path / 'popularity.json'} is not a list of item ids", hint=retrain)
        meta = header.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise FormatError(f"{hfile}: 'meta' must be an object", hint=retrain)
        return cls(model.to(device), ids, read_items(path / "items.jsonl"), tok, pop, meta, QuantRecipe.load(path))


def _read_json(p: Path, hint: str):
    """A checkpoint's JSON file; a damaged one (not UTF-8, not JSON, nested absurdly deep) is a :class:`FormatError`."""
    try:
        return json.loads(p.read_bytes().decode("utf-8"))
    except OSError as e:
        raise FormatError(f"{p} cannot be read ({e.strerror or e})", hint="check the checkpoint folder's permissions") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, a 5,000-digit number; deep nesting
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:120]
        raise FormatError(f"{p} is corrupted ({why})", hint=hint) from None
