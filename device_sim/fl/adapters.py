"""What a federation trains on the device model, and its wire format: LoRA adapters (peft),
chosen base parameters in full, or both.

:class:`AdapterConfig` names the federated parameters: ``rank`` > 0 injects low-rank
adapters into the Linear layers matching ``targets``; ``train`` unfreezes base
parameters (regexes over names such as ``"head.weight"``) that are then trained and
averaged whole. Everything else stays frozen and identical on every device.
:data:`FEDERATED_PARTS` holds the candidates measured in docs/federated.md (wire size per
client per round in the comment: tensor bytes, fp32, measured on the ML-1M recommender of 128 wide, 2+2 layers).

>>> import torch
>>> from server.model import GRConfig, GenerativeRetriever
>>> cfg = GRConfig(task="rec", n_items=5, levels=(4, 4), d_model=16, n_heads=2, max_len=8,
...                n_enc_layers=1, n_dec_layers=1)
>>> m = add_adapters(GenerativeRetriever(cfg, codes=torch.zeros(5, 2, dtype=torch.long)), AdapterConfig(rank=2))
>>> a = get_adapter(m)
>>> sorted(a)[0], adapter_bytes(a) == sum(v.nbytes for v in a.values())
('dec.0.cross_attn.o.lora_A', True)
>>> trainable = [n for n, p in m.named_parameters() if p.requires_grad]
>>> all(".lora_" in n for n in trainable)
True
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np
import torch
from torch import nn

from edge_gr.errors import InputError

__all__ = ["AdapterConfig", "FEDERATED_PARTS", "federated_part", "add_adapters", "get_adapter", "set_adapter",
           "adapter_bytes"]

# Which Linear layers get adapters: regexes over module names, e.g. "enc.0.attn.q".
# Every one of these sees a batch-first input in per-record training, which Opacus'
# per-sample gradient hooks need (see device_sim/fl/local.py).
DEFAULT_TARGETS = (r"(enc|dec)\.\d+\.(attn|cross_attn)\.(q|o)",)


@dataclass(frozen=True)
class AdapterConfig:
    """LoRA shape: ``rank`` r, scaling ``alpha / r``, the module-name regexes it targets."""

    rank: int = 4
    alpha: float = 8.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    train: tuple[str, ...] = ()     # base parameters federated in full (regexes over names without peft's ".base_layer")

    def to_dict(self) -> dict:
        return asdict(self)


# Every Linear of the encoder and decoder (attention projections and feed-forward).
ALL_LINEAR = (r"(enc|dec)\.\d+\.(attn|self_attn|cross_attn)\.(q|kv|o)", r"(enc|dec)\.\d+\.ffn\.net\.\d+")

FEDERATED_PARTS: dict[str, AdapterConfig] = {
    "lora-qo": AdapterConfig(),                                        # rank-4 LoRA on q/o (the first recipe): 33 KB
    "lora-all": AdapterConfig(rank=2, alpha=4.0, targets=ALL_LINEAR),  # rank-2 LoRA on every Linear: 84 KB
    "head-norms": AdapterConfig(rank=0, train=(r".*ln\d?\.(weight|bias)", r"head\.(weight|bias)")),   # output head + LayerNorms: 230 KB
    "codes": AdapterConfig(rank=0, train=(r"(code_in|dec_in|level_in|head)\..*",)),  # semantic-code embeddings + head: 653 KB
    "body": AdapterConfig(rank=0, train=(r"(?!item_in\.).*",)),       # everything but the item-embedding table: 4.46 MB
    "full": AdapterConfig(rank=0, train=(r".*",)),                     # the whole model: 6.36 MB
}


def federated_part(name: str) -> AdapterConfig:
    """The :class:`AdapterConfig` of a named candidate (:data:`FEDERATED_PARTS`).

    >>> federated_part("full").train
    ('.*',)
    """
    if name not in FEDERATED_PARTS:
        raise InputError(f"unknown federated part {name!r}", hint=f"use one of {sorted(FEDERATED_PARTS)}")
    return FEDERATED_PARTS[name]


def _base_name(name: str) -> str:
    return name.replace(".base_layer", "")


def add_adapters(model: nn.Module, cfg: AdapterConfig = AdapterConfig()) -> nn.Module:
    """Freeze ``model``, inject LoRA adapters and unfreeze ``cfg.train`` (in place, returns it).
    B starts at 0, so the adapted model equals the base until trained; A starts random (peft's init).

    Start every federation from this init (:func:`get_adapter` right after), never from
    all-zero arrays: with A = 0 and B = 0 both gradients vanish and nothing trains.
    """
    if cfg.rank < 0 or (cfg.rank == 0 and not cfg.train):
        raise InputError(f"adapter rank must be >= 1 (or 0 with base parameters in `train`), got {cfg.rank}",
                         hint="e.g. AdapterConfig(rank=4) or federated_part('head-norms')")
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.rank > 0:
        from peft import LoraConfig, inject_adapter_in_model

        pattern = "|".join(f"(?:{t})" for t in cfg.targets)
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and re.fullmatch(pattern, n)]
        if not names:
            raise InputError(f"no Linear layer of the model matches the adapter targets {cfg.targets}",
                             hint="pass targets that match module names such as 'enc.0.attn.q'")
        inject_adapter_in_model(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=names), model)
    if cfg.train:
        pattern = "|".join(f"(?:{t})" for t in cfg.train)
        hit = [p for n, p in model.named_parameters() if ".lora_" not in n and re.fullmatch(pattern, _base_name(n))]
        if not hit:
            raise InputError(f"no parameter of the model matches {cfg.train}", hint="match names such as 'head.weight'")
        for p in hit:
            p.requires_grad_(True)
    return model


def _key(name: str) -> str:
    # peft names parameters "<module>.lora_A.default.weight"; the wire key drops the
    # adapter name and ".weight": "<module>.lora_A". A base parameter keeps its own name.
    return _base_name(name.replace(".default.weight", ""))


def _federated(model: nn.Module) -> dict[str, torch.nn.Parameter]:
    # what add_adapters made trainable: the LoRA factors and the unfrozen base parameters
    return {_key(n): p for n, p in model.named_parameters() if ".lora_" in n or p.requires_grad}


def get_adapter(model: nn.Module) -> dict[str, np.ndarray]:
    """The federated weights as float32 arrays, keyed by module (sorted, stable across devices)."""
    out = {k: p.detach().cpu().float().numpy().copy() for k, p in _federated(model).items()}
    if not out:
        raise InputError("the model has no adapters", hint="call add_adapters(model) first")
    return dict(sorted(out.items()))


def set_adapter(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> nn.Module:
    """Load federated weights (from :func:`get_adapter` or an aggregate) into ``model``."""
    params = _federated(model)
    missing, extra = set(params) - set(arrays), set(arrays) - set(params)
    if missing or extra:
        raise InputError(f"adapter keys do not match the model (missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]})",
                         hint="use the same AdapterConfig on the server and every device")
    with torch.no_grad():
        for k, p in params.items():
            a = np.asarray(arrays[k])
            if a.shape != tuple(p.shape):
                raise InputError(f"adapter {k} has shape {a.shape}, the model wants {tuple(p.shape)}",
                                 hint="use the same AdapterConfig on the server and every device")
            p.copy_(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(p.device))
    return model


def adapter_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Payload bytes of an adapter (the tensor data; the message framing is measured separately)."""
    return int(sum(np.asarray(v).nbytes for v in arrays.values()))
