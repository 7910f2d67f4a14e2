"""Model compression for on-device generative retrieval. This package imports only the layer-level
math (it never imports training, so the checkpoint loader may use it without an import circle):

* :mod:`.quantize` - the reference int8 / int4 / fp16 quantizer, mixed-precision recipes,
  ``quantize_(model, config)`` and activation-range calibration (a tested reference and a
  quality check; bundles are quantized by each backend's own tool, see :mod:`.recipe`).
* :mod:`.recipe` - the saved quantization recipe and its translation per backend.
* :mod:`.prune` - structured pruning of FFN channels and attention heads (``prune_``) and
  per-layer sensitivity.
* :mod:`.grouped` - grouped (block-diagonal) linear layers with channel shuffle.
* :mod:`.transforms` - what a checkpoint records so loading rebuilds a compressed student.

Training-based compression is imported explicitly: :mod:`server.compress.distill`
(``distill``, ``DistillConfig``), :mod:`server.compress.recover` (``progressive_prune``,
``grouped_variant``) and :mod:`server.compress.variants` (``edge-gr compress``).

>>> import torch.nn as nn
>>> m = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
>>> quantize_(m, Int8Config())["modules"]["0"]["precision"]
'int8'
"""

from .prune import PruneConfig, layer_sensitivity, prunable_units, prune_
from .grouped import GroupedLinear, channel_shuffle, from_linear, replace_linear_
from .transforms import apply_transforms, describe
from .quantize import (
    FP16_MAX,
    Fp16Config,
    Fp16Embedding,
    Fp16Linear,
    QuantEmbedding,
    Int4Config,
    Int8Config,
    MixedPrecisionRecipe,
    QuantConfig,
    QuantLinear,
    calibrate_activation_ranges,
    chapter_recipe,
    dequantize,
    dequantize_int4_groupwise,
    model_nbytes,
    pack_int4,
    quantize_,
    recipe_from_rules,
    recipe_to_rules,
    quantize_int4_groupwise,
    quantize_int8_symmetric,
    unpack_int4,
)

__all__ = [
    # quantize
    "FP16_MAX", "quantize_int8_symmetric", "dequantize", "quantize_int4_groupwise", "dequantize_int4_groupwise",
    "pack_int4", "unpack_int4", "QuantLinear", "QuantEmbedding", "Fp16Linear", "Fp16Embedding", "Int8Config", "Int4Config",
    "Fp16Config", "QuantConfig", "MixedPrecisionRecipe", "chapter_recipe", "recipe_to_rules", "recipe_from_rules", "quantize_", "model_nbytes",
    "calibrate_activation_ranges",
    # prune
    "PruneConfig", "prune_", "layer_sensitivity", "prunable_units",
    # grouped
    "GroupedLinear", "channel_shuffle", "from_linear", "replace_linear_",
    # transforms (checkpoints)
    "describe", "apply_transforms",
]
