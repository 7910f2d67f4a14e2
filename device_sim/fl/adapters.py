"""LoRA adapters on the device model (peft), and their wire format.

Federated personalization trains only small low-rank adapters; the base model stays
frozen and identical on every device, so a round moves kilobytes, not the model.

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

__all__ = ["AdapterConfig", "add_adapters", "get_adapter", "set_adapter", "adapter_bytes"]

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

    def to_dict(self) -> dict:
        return asdict(self)


def add_adapters(model: nn.Module, cfg: AdapterConfig = AdapterConfig()) -> nn.Module:
    """Freeze ``model`` and inject LoRA adapters (in place, returns it). B starts at 0,
    so the adapted model equals the base until trained; A starts random (peft's init).

    Start every federation from this init (:func:`get_adapter` right after), never from
    all-zero arrays: with A = 0 and B = 0 both gradients vanish and nothing trains.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if cfg.rank < 1:
        raise InputError(f"adapter rank must be >= 1, got {cfg.rank}")
    pattern = "|".join(f"(?:{t})" for t in cfg.targets)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and re.fullmatch(pattern, n)]
    if not names:
        raise InputError(f"no Linear layer of the model matches the adapter targets {cfg.targets}",
                         hint="pass targets that match module names such as 'enc.0.attn.q'")
    for p in model.parameters():
        p.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=names), model)
    return model


def _key(name: str) -> str:
    # peft names parameters "<module>.lora_A.default.weight"; the wire key drops the
    # adapter name and ".weight": "<module>.lora_A"
    return name.replace(".default.weight", "")


def get_adapter(model: nn.Module) -> dict[str, np.ndarray]:
    """The adapter weights as float32 arrays, keyed by module (sorted, stable across devices)."""
    out = {_key(n): p.detach().cpu().float().numpy().copy() for n, p in model.named_parameters() if ".lora_" in n}
    if not out:
        raise InputError("the model has no adapters", hint="call add_adapters(model) first")
    return dict(sorted(out.items()))


def set_adapter(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> nn.Module:
    """Load adapter weights (from :func:`get_adapter` or an aggregate) into ``model``."""
    params = {_key(n): p for n, p in model.named_parameters() if ".lora_" in n}
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
            p.copy_(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)))
    return model


def adapter_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Payload bytes of an adapter (the tensor data; the message framing is measured separately)."""
    return int(sum(np.asarray(v).nbytes for v in arrays.values()))
