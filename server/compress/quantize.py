"""Weight-only post-training quantization: the pure math, reference modules and ``quantize_``.

* :func:`quantize_int8_symmetric` - per-output-channel symmetric int8, ``s = max|w| / 127``.
* :func:`quantize_int4_groupwise` - symmetric int4 per (row, group of ``group_size`` inputs),
  ``s = max|w| / 7``, values in ``[-7, 7]`` (stored one per int8; :func:`pack_int4` packs two a byte).
* :class:`QuantLinear` - a reference *fake-quant* ``nn.Linear``: integer weights and scales as
  buffers, dequantized in ``forward`` (so outputs are what an integer kernel would compute up to
  float rounding; it is not faster).
* :func:`quantize_` - in place, torchao style: ``quantize_(model, Int8Config())`` or a
  :class:`MixedPrecisionRecipe` of fnmatch rules on module names (first match wins).
* :func:`calibrate_activation_ranges` - min/max of every Linear input over some batches; raises
  :class:`~edge_gr.errors.QuantizationError` on NaN/inf or values outside a given range.

Scales are kept in float32 (exact error bounds even for weights of 1e6 or 1e-12; fp16 scales would
overflow / underflow there). ``nbytes`` counts them, so int4 with ``group_size=32`` costs
4 + 32/32 = 5 bits a weight; ``group_size=128`` costs 4.25.

>>> import torch.nn as nn
>>> m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
>>> report = quantize_(m, MixedPrecisionRecipe([("2", Fp16Config()), ("*", Int8Config())]))
>>> [report["modules"][n]["precision"] for n in ("0", "2")]
['int8', 'fp16']
>>> report["bytes_before"], report["bytes_after"]
(18720, 5648)
>>> m(torch.ones(3, 64)).dtype
torch.float32
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from edge_gr.errors import InputError, QuantizationError

from ._util import set_module

__all__ = [
    "FP16_MAX",
    "quantize_int8_symmetric",
    "dequantize",
    "quantize_int4_groupwise",
    "dequantize_int4_groupwise",
    "pack_int4",
    "unpack_int4",
    "QuantLinear",
    "Fp16Linear",
    "Fp16Embedding",
    "QuantEmbedding",
    "Int8Config",
    "Int4Config",
    "Fp16Config",
    "QuantConfig",
    "MixedPrecisionRecipe",
    "chapter_recipe",
    "recipe_to_rules",
    "recipe_from_rules",
    "quantize_",
    "model_nbytes",
    "calibrate_activation_ranges",
]

FP16_MAX = float(torch.finfo(torch.float16).max)  # 65504: largest finite fp16 value
_TINY = torch.finfo(torch.float32).tiny  # a scale below this (subnormal / 0) is replaced by 1


# -- the math --------------------------------------------------------------------------------
def _check_weight(w: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise InputError(f"{what} needs a floating-point tensor, got {getattr(w, 'dtype', type(w).__name__)}")
    if w.numel() == 0:
        raise InputError(f"{what} got an empty tensor of shape {tuple(w.shape)}")
    w = w.detach().float()
    if not torch.isfinite(w).all():
        raise QuantizationError(f"{what}: the weight has NaN or inf values",
                                hint="fix or re-train the layer; a non-finite weight cannot be quantized")
    return w


def _safe_scales(amax: torch.Tensor, qmax: int) -> torch.Tensor:
    s = amax / qmax
    return torch.where(s >= _TINY, s, torch.ones_like(s))  # all-zero (or denormal) channels: scale 1, no NaN


def quantize_int8_symmetric(w: torch.Tensor, axis: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel symmetric int8: ``s = max|w| / 127`` along every dim but ``axis``.

    Returns ``(q, s)``: ``q`` int8 in ``[-127, 127]`` with ``w``'s shape and ``s`` float32 of
    shape ``(w.shape[axis],)``; ``|w - q * s| <= s / 2`` elementwise. A channel that is all
    zero (or too small for a normal float32 scale) gets ``s = 1`` and ``q = 0``.

    >>> q, s = quantize_int8_symmetric(torch.tensor([[1.0, -0.5], [0.0, 0.0]]))
    >>> q.tolist(), s.tolist()
    ([[127, -64], [0, 0]], [0.007874015718698502, 1.0])
    >>> dequantize(q, s).tolist()[1]
    [0.0, 0.0]
    """
    w = _check_weight(w, "quantize_int8_symmetric")
    if not -w.dim() <= axis < w.dim():
        raise InputError(f"axis {axis} is out of range for a {w.dim()}-d tensor", hint="use 0 for nn.Linear weights (out, in)")
    axis %= w.dim()
    dims = [d for d in range(w.dim()) if d != axis]
    amax = w.abs().amax(dim=dims) if dims else w.abs()
    s = _safe_scales(amax, 127)
    shape = [1] * w.dim()
    shape[axis] = -1
    q = torch.round(w / s.view(shape)).clamp_(-127, 127).to(torch.int8)
    return q, s


def dequantize(q: torch.Tensor, scales: torch.Tensor, axis: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize_int8_symmetric`: ``q * s`` with ``s`` broadcast along ``axis``.

    >>> dequantize(torch.tensor([[2, -1]], dtype=torch.int8), torch.tensor([0.5])).tolist()
    [[1.0, -0.5]]
    """
    if scales.dim() != 1 or scales.numel() != q.shape[axis]:
        raise InputError(f"scales of shape {tuple(scales.shape)} do not match axis {axis} of {tuple(q.shape)}")
    shape = [1] * q.dim()
    shape[axis] = -1
    return (q.float() * scales.float().view(shape)).to(dtype)


def quantize_int4_groupwise(w: torch.Tensor, group_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 per (row, group of ``group_size`` consecutive inputs): ``s = max|w| / 7``.

    ``w`` is ``(out, in)``; returns ``q`` int8 holding values in ``[-7, 7]``, shape ``(out, in)``,
    and ``s`` float32 ``(out, in // group_size)``; ``|w - q * s| <= s / 2`` within each group.

    >>> q, s = quantize_int4_groupwise(torch.tensor([[7.0, -3.5, 0.1, 0.2]]), group_size=2)
    >>> q.tolist(), s.tolist()
    ([[7, -4, 4, 7]], [[1.0, 0.02857142873108387]])
    >>> quantize_int4_groupwise(torch.ones(2, 48), group_size=32)
    Traceback (most recent call last):
    ...
    edge_gr.errors.InputError: input size 48 is not divisible by group_size 32. To fix: use a group_size that divides 48 (e.g. 16), or an int8 rule for this layer
    """
    w = _check_weight(w, "quantize_int4_groupwise")
    if w.dim() != 2:
        raise InputError(f"quantize_int4_groupwise needs a 2-d (out, in) weight, got shape {tuple(w.shape)}")
    if not isinstance(group_size, int) or group_size < 1:
        raise InputError(f"group_size must be a positive int, got {group_size!r}")
    out_f, in_f = w.shape
    if in_f % group_size:
        g = max(d for d in (128, 64, 32, 16, 8, 4, 2, 1) if in_f % d == 0)
        raise InputError(f"input size {in_f} is not divisible by group_size {group_size}",
                         hint=f"use a group_size that divides {in_f} (e.g. {g}), or an int8 rule for this layer")
    wg = w.view(out_f, in_f // group_size, group_size)
    s = _safe_scales(wg.abs().amax(-1), 7)
    q = torch.round(wg / s[..., None]).clamp_(-7, 7).to(torch.int8)
    return q.view(out_f, in_f), s


def dequantize_int4_groupwise(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize_int4_groupwise`; the group size is ``in // scales.shape[1]``.

    >>> dequantize_int4_groupwise(torch.tensor([[7, -4]], dtype=torch.int8), torch.tensor([[0.5]])).tolist()
    [[3.5, -2.0]]
    """
    if q.dim() != 2 or scales.dim() != 2 or scales.shape[0] != q.shape[0] or q.shape[1] % scales.shape[1]:
        raise InputError(f"scales of shape {tuple(scales.shape)} do not fit an int4 weight of shape {tuple(q.shape)}")
    out_f, in_f = q.shape
    n_groups = scales.shape[1]
    w = q.float().view(out_f, n_groups, in_f // n_groups) * scales.float()[..., None]
    return w.view(out_f, in_f).to(dtype)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two int4 values (int8 tensor in ``[-8, 7]``) per uint8 byte, low nibble first; flattens.

    >>> p = pack_int4(torch.tensor([-7, 7, 0, -1], dtype=torch.int8))
    >>> p.tolist(), unpack_int4(p, 4).tolist()
    ([121, 240], [-7, 7, 0, -1])
    """
    flat = q.reshape(-1).to(torch.int16)
    if flat.numel() and (flat.min() < -8 or flat.max() > 7):
        raise InputError("pack_int4 needs values in [-8, 7]")
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    nib = flat & 0xF
    return (nib[0::2] | (nib[1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: the first ``numel`` values as a flat int8 tensor (see there)."""
    b = packed.reshape(-1).to(torch.int16)
    nib = torch.stack([b & 0xF, b >> 4], -1).reshape(-1)[:numel]
    return torch.where(nib > 7, nib - 16, nib).to(torch.int8)


# -- configs and recipes --------------------------------------------------------------------
@dataclass(frozen=True)
class Int8Config:
    """Per-output-channel symmetric int8 weights (``nn.Linear``; per row for ``nn.Embedding``); activations stay float."""

    precision: ClassVar[str] = "int8"


@dataclass(frozen=True)
class Int4Config:
    """Group-wise symmetric int4 weights (``nn.Linear``; ``nn.Embedding`` rows); ``group_size`` must divide
    ``in_features`` (the embedding dim)."""

    group_size: int = 32
    precision: ClassVar[str] = "int4"

    def __post_init__(self):
        if not isinstance(self.group_size, int) or self.group_size < 1:
            raise InputError(f"Int4Config.group_size must be a positive int, got {self.group_size!r}")


@dataclass(frozen=True)
class Fp16Config:
    """fp16 weight storage, upcast in ``forward`` (``nn.Linear`` and ``nn.Embedding``)."""

    precision: ClassVar[str] = "fp16"


QuantConfig = Int8Config | Int4Config | Fp16Config


@dataclass
class MixedPrecisionRecipe:
    """``rules``: ``(glob, config)`` pairs matched (``fnmatch``, case-sensitive) against module names
    from ``model.named_modules()``; the first match wins. A ``None`` config, or no match, keeps the
    module as it is.

    >>> r = MixedPrecisionRecipe([("head", Fp16Config()), ("*", Int8Config())])
    >>> r.config_for("head").precision, r.config_for("dec.0.ffn.net.0").precision
    ('fp16', 'int8')
    """

    rules: list[tuple[str, QuantConfig | None]] = field(default_factory=list)

    def __post_init__(self):
        for rule in self.rules:
            ok = isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[0], str)
            if not ok or not (rule[1] is None or isinstance(rule[1], (Int8Config, Int4Config, Fp16Config))):
                raise InputError(f"bad recipe rule {rule!r}", hint="use (glob, Int8Config() | Int4Config() | Fp16Config() | None)")

    def config_for(self, name: str) -> QuantConfig | None:
        """The config of the first rule whose glob matches ``name`` (``None``: keep the module)."""
        for pattern, cfg in self.rules:
            if fnmatch.fnmatchcase(name, pattern):
                return cfg
        return None


def chapter_recipe(default: Int8Config | Int4Config | None = None) -> MixedPrecisionRecipe:
    """The default mixed-precision recipe: embeddings (``*_in``) fp16, attention (``*attn*``) int8,
    the output layer (``head``) fp16, every other Linear int8 (or ``default`` if given, e.g.
    ``Int4Config()`` for the FFNs).

    >>> [(p, c.precision) for p, c in chapter_recipe().rules]
    [('*_in', 'fp16'), ('*attn*', 'int8'), ('head', 'fp16'), ('*', 'int8')]
    """
    rest = default or Int8Config()
    return MixedPrecisionRecipe([("*_in", Fp16Config()), ("*attn*", Int8Config()), ("head", Fp16Config()), ("*", rest)])


def recipe_to_rules(config: "QuantConfig | MixedPrecisionRecipe") -> list:
    """A JSON-able form of a config or recipe (stored in ``GRConfig.quant`` so checkpoints reload).

    >>> recipe_to_rules(chapter_recipe(Int4Config(group_size=64)))[-1]
    ['*', {'precision': 'int4', 'group_size': 64}]
    """
    recipe = config if isinstance(config, MixedPrecisionRecipe) else MixedPrecisionRecipe([("*", config)])
    out = []
    for pattern, cfg in recipe.rules:
        spec = None if cfg is None else {"precision": cfg.precision, **({"group_size": cfg.group_size} if isinstance(cfg, Int4Config) else {})}
        out.append([pattern, spec])
    return out


def recipe_from_rules(rules: list) -> MixedPrecisionRecipe:
    """Inverse of :func:`recipe_to_rules`."""
    make = {"int8": lambda d: Int8Config(), "fp16": lambda d: Fp16Config(), "int4": lambda d: Int4Config(group_size=int(d.get("group_size", 32)))}
    try:
        return MixedPrecisionRecipe([(str(p), None if d is None else make[d["precision"]](d)) for p, d in rules])
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"bad quantization rules {rules!r} ({e})", hint="rules look like [['*', {'precision': 'int8'}]]") from None


# -- modules --------------------------------------------------------------------------------
def _tensor_bytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


class QuantLinear(nn.Module):
    """Weight-only quantized ``nn.Linear`` (reference fake-quant: dequantizes in ``forward``).

    Buffers: ``qweight`` int8 ``(out, in)`` (int4 values in ``[-7, 7]`` for ``Int4Config``),
    ``scales`` float32 (``(out,)`` or ``(out, in // group_size)``) and ``bias`` (original dtype).

    >>> ql = QuantLinear(nn.Linear(64, 16), Int4Config(group_size=32))
    >>> ql.qweight.dtype, tuple(ql.scales.shape), ql.nbytes()   # 64*16/2 + 16*2*4 + 16*4
    (torch.int8, (16, 2), 704)
    """

    def __init__(self, linear: nn.Linear, config: Int8Config | Int4Config | None = None):
        super().__init__()
        config = config or Int8Config()
        if not isinstance(config, (Int8Config, Int4Config)):
            raise InputError(f"QuantLinear needs Int8Config or Int4Config, got {config!r}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bits = 8 if isinstance(config, Int8Config) else 4
        self.group_size = config.group_size if isinstance(config, Int4Config) else None
        if self.bits == 8:
            q, s = quantize_int8_symmetric(linear.weight, axis=0)
        else:
            q, s = quantize_int4_groupwise(linear.weight, config.group_size)
        self.register_buffer("qweight", q)
        self.register_buffer("scales", s)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float ``(out, in)`` weight the layer computes with."""
        if self.bits == 8:
            return dequantize(self.qweight, self.scales, 0, dtype)
        return dequantize_int4_groupwise(self.qweight, self.scales, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype), b)

    def nbytes(self) -> int:
        """Storage size in bytes: int8 weights 1 byte each, int4 0.5 (packed), plus scales and bias."""
        n = self.qweight.numel()
        return (n if self.bits == 8 else (n + 1) // 2) + _tensor_bytes(self.scales) + _tensor_bytes(self.bias)

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.group_size else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}{g}, bias={self.bias is not None}"


def _check_fp16_range(w: torch.Tensor, what: str) -> None:
    if not torch.isfinite(w).all():
        raise QuantizationError(f"{what}: the weight has NaN or inf values", hint="fix or re-train the layer")
    if w.numel() and float(w.detach().abs().max()) > FP16_MAX:
        raise QuantizationError(f"{what}: weights exceed the fp16 range (|w| > {FP16_MAX:g})",
                                hint="use an int8 rule (per-channel scales) or keep this module in fp32")


class Fp16Linear(nn.Module):
    """``nn.Linear`` with fp16 weight (and bias) storage, cast to the input's dtype in ``forward``.

    >>> l = Fp16Linear(nn.Linear(4, 2))
    >>> l.weight.dtype, l(torch.ones(1, 4)).dtype, l.nbytes()
    (torch.float16, torch.float32, 20)
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        _check_fp16_range(linear.weight, "Fp16Linear")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", linear.weight.detach().to(torch.float16))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(torch.float16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), b)

    def nbytes(self) -> int:
        return _tensor_bytes(self.weight) + _tensor_bytes(self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Fp16Embedding(nn.Module):
    """``nn.Embedding`` with an fp16 table; looked-up rows are upcast to the original dtype.

    Inference only: ``max_norm`` / ``sparse`` / gradient options of the original are dropped.

    >>> e = Fp16Embedding(nn.Embedding(10, 4, padding_idx=0))
    >>> e.weight.dtype, e(torch.tensor([[1, 2]])).dtype, e.nbytes()
    (torch.float16, torch.float32, 80)
    """

    def __init__(self, emb: nn.Embedding):
        super().__init__()
        _check_fp16_range(emb.weight, "Fp16Embedding")
        self.num_embeddings, self.embedding_dim, self.padding_idx = emb.num_embeddings, emb.embedding_dim, emb.padding_idx
        self.out_dtype = emb.weight.dtype
        self.register_buffer("weight", emb.weight.detach().to(torch.float16))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.weight, self.padding_idx).to(self.out_dtype)

    def nbytes(self) -> int:
        return _tensor_bytes(self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}"


class QuantEmbedding(nn.Module):
    """Weight-only quantized ``nn.Embedding``: every row quantized like a Linear's output channel
    (int8 per row, or int4 per group of ``group_size`` dims of a row); looked-up rows are
    dequantized on the fly, so the table never exists in float.

    Our own module: torchao's quantized embedding does not lower to ExecuTorch here (no
    ``dequantize_affine`` out variant, see ENVIRONMENT.md), and the device runtime only needs the
    int8 table and its scales.

    >>> e = QuantEmbedding(nn.Embedding(10, 64, padding_idx=0), Int8Config())
    >>> e(torch.tensor([[0, 3]])).shape, e.nbytes()   # 640 int8 + 10 fp32 scales
    (torch.Size([1, 2, 64]), 680)
    """

    def __init__(self, emb: nn.Embedding, config: Int8Config | Int4Config | None = None):
        super().__init__()
        config = config or Int8Config()
        self.num_embeddings, self.embedding_dim, self.padding_idx = emb.num_embeddings, emb.embedding_dim, emb.padding_idx
        self.out_dtype = emb.weight.dtype
        self.bits = 8 if isinstance(config, Int8Config) else 4
        self.group_size = config.group_size if isinstance(config, Int4Config) else None
        if self.bits == 8:
            q, sc = quantize_int8_symmetric(emb.weight, axis=0)
            sc = sc[:, None]
        else:
            q, sc = quantize_int4_groupwise(emb.weight, config.group_size)
        self.register_buffer("qweight", q)
        self.register_buffer("scales", sc)  # (num, 1) int8 or (num, dim // group_size) int4

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        q, sc = self.qweight[idx].float(), self.scales[idx]
        g = self.embedding_dim // sc.shape[-1]
        out = (q.view(*q.shape[:-1], sc.shape[-1], g) * sc[..., None]).view(q.shape)
        return out.to(self.out_dtype)

    def nbytes(self) -> int:
        n = self.qweight.numel()
        return (n if self.bits == 8 else (n + 1) // 2) + _tensor_bytes(self.scales)

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.group_size else ""
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}{g}, padding_idx={self.padding_idx}"


_COMPRESSED = (QuantLinear, Fp16Linear, Fp16Embedding, QuantEmbedding)
_LINEARS = (nn.Linear, QuantLinear, Fp16Linear)


def model_nbytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers, counting int4 weights as packed (0.5 byte).

    >>> model_nbytes(nn.Linear(4, 2))   # (8 + 2) float32
    40
    """
    seen_mod: set[int] = set()
    seen_t: set[int] = set()

    def visit(m: nn.Module) -> int:
        if id(m) in seen_mod:
            return 0
        seen_mod.add(id(m))
        if isinstance(m, _COMPRESSED):
            return m.nbytes()
        n = 0
        for t in (*m.parameters(recurse=False), *m.buffers(recurse=False)):
            if id(t) not in seen_t:
                seen_t.add(id(t))
                n += _tensor_bytes(t)
        return n + sum(visit(c) for c in m.children())

    return visit(model)


def _precision_of(m: nn.Module) -> str:
    dt = next((t.dtype for t in m.parameters() if t.is_floating_point()), None)
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}.get(dt, str(dt))


def _convert(name: str, m: nn.Module, cfg: QuantConfig | None) -> tuple[nn.Module | None, dict[str, Any]]:
    entry: dict[str, Any] = {"type": type(m).__name__, "bytes_before": model_nbytes(m)}
    new: nn.Module | None = None
    if cfg is None:
        entry["note"] = "no rule: kept"
    elif isinstance(cfg, Fp16Config):
        try:
            new = Fp16Linear(m) if isinstance(m, nn.Linear) else Fp16Embedding(m)
        except QuantizationError as e:
            raise QuantizationError(f"{name}: {e.message}", hint=e.hint) from None
    else:
        try:
            new = QuantLinear(m, cfg) if isinstance(m, nn.Linear) else QuantEmbedding(m, cfg)
        except (InputError, QuantizationError) as e:
            raise type(e)(f"{name}: {e.message}", hint=e.hint) from None
    entry["precision"] = cfg.precision if new is not None else _precision_of(m)
    entry["bytes"] = model_nbytes(new) if new is not None else entry["bytes_before"]
    return new, entry


def quantize_(model: nn.Module, config: QuantConfig | MixedPrecisionRecipe) -> dict[str, Any]:
    """Quantize ``model``'s ``nn.Linear`` / ``nn.Embedding`` modules in place.

    ``config`` is one config for every such module, or a :class:`MixedPrecisionRecipe`. Linear
    layers become :class:`QuantLinear` (int8 / int4) or :class:`Fp16Linear`; embeddings under an
    fp16 rule become :class:`Fp16Embedding` (int rules on embeddings are reported and skipped).
    Everything is converted before anything is swapped, so an error leaves the model untouched.
    A module reachable under several names is converted once, by its first name's rule.

    Returns ``{"modules": {name: {"type", "precision", "bytes", "bytes_before"[, "note"]}},
    "bytes_before": int, "bytes_after": int, "ratio": float}`` (bytes of the whole model, see
    :func:`model_nbytes`). See the module docstring for an example.
    """
    if isinstance(config, (Int8Config, Int4Config, Fp16Config)):
        recipe = MixedPrecisionRecipe([("*", config)])
    elif isinstance(config, MixedPrecisionRecipe):
        recipe = config
    else:
        raise InputError(f"quantize_ needs a config or a MixedPrecisionRecipe, got {type(config).__name__}",
                         hint="e.g. quantize_(model, Int8Config()) or quantize_(model, chapter_recipe())")
    before = model_nbytes(model)
    converted: dict[int, nn.Module | None] = {}
    swaps: list[tuple[str, nn.Module]] = []
    modules: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if not isinstance(m, (nn.Linear, nn.Embedding)):
            continue
        if not name:
            raise InputError(f"quantize_ cannot replace the root module ({type(m).__name__}) in place",
                             hint="wrap it, e.g. quantize_(nn.Sequential(layer), config)")
        if id(m) not in converted:
            converted[id(m)], modules[name] = _convert(name, m, recipe.config_for(name))
        if converted[id(m)] is not None:
            swaps.append((name, converted[id(m)]))
    for name, new in swaps:
        set_module(model, name, new)
    after = model_nbytes(model)
    return {"modules": modules, "bytes_before": before, "bytes_after": after, "ratio": after / before if before else 1.0}


# -- calibration ----------------------------------------------------------------------------
def calibrate_activation_ranges(model: nn.Module, batches: Iterable[Any], *, limit: float | None = None) -> dict[str, tuple[float, float]]:
    """Run ``batches`` through ``model`` (eval mode, no grad) and record ``(min, max)`` of the
    input of every Linear layer (``nn.Linear``, :class:`QuantLinear`, :class:`Fp16Linear`).

    A batch is a tuple / list of positional arguments or a single tensor. Raises
    :class:`~edge_gr.errors.QuantizationError` naming the layer as soon as an input has NaN / inf
    or, with ``limit`` (e.g. :data:`FP16_MAX` for fp16 activations), ``|x| > limit``.
    The model's train / eval mode is restored afterwards.

    >>> m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    >>> r = calibrate_activation_ranges(m, [torch.ones(4, 2), torch.zeros(4, 2)])
    >>> sorted(r), r["0"]
    (['0', '2'], (0.0, 1.0))
    >>> calibrate_activation_ranges(m, [torch.full((1, 2), float("nan"))])
    Traceback (most recent call last):
    ...
    edge_gr.errors.QuantizationError: non-finite activation (NaN/inf) entering '0' in batch 0. To fix: ...
    """
    ranges: dict[str, tuple[float, float]] = {}
    batch_no = 0

    def make_hook(name: str):
        def hook(_mod: nn.Module, args: tuple) -> None:
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor) or x.numel() == 0:
                return
            if not torch.isfinite(x).all():
                raise QuantizationError(f"non-finite activation (NaN/inf) entering {name!r} in batch {batch_no}",
                                        hint="check the inputs and the weights before this layer; do not quantize a model that produces NaN")
            lo, hi = float(x.min()), float(x.max())
            if limit is not None and max(-lo, hi) > limit:
                raise QuantizationError(f"activation entering {name!r} in batch {batch_no} reaches {max(-lo, hi):g}, beyond the limit {limit:g}",
                                        hint="keep this layer (and its inputs) in fp32, or rescale the preceding layer")
            if name in ranges:
                lo, hi = min(lo, ranges[name][0]), max(hi, ranges[name][1])
            ranges[name] = (lo, hi)
        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in model.named_modules() if isinstance(m, _LINEARS)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                model(*batch) if isinstance(batch, (tuple, list)) else model(batch)
                batch_no += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if batch_no == 0:
        raise InputError("calibrate_activation_ranges got no batches", hint="pass a few representative input batches")
    return ranges
