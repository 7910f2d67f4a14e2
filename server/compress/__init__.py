"""Model compression for on-device generative retrieval (issue #3): the pure-math layer.

* :mod:`.quantize` - int8 / int4 weight quantization, fp16 storage, mixed-precision recipes,
  ``quantize_(model, config)`` and activation-range calibration.
* :mod:`.distill` - knowledge-distillation losses, :class:`DistillConfig` and the trainer
  :func:`distill` (teacher -> smaller student, token-level KD + hidden / sequence-level / rank terms).
* :mod:`.prune` - structured pruning of FFN channels and attention heads (``prune_``) and
  per-layer sensitivity.
* :mod:`.grouped` - grouped (block-diagonal) linear layers with channel shuffle.

>>> import torch.nn as nn
>>> m = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
>>> quantize_(m, Int8Config())["modules"]["0"]["precision"]
'int8'
"""

from .distill import DistillConfig, Distiller, RecDistiller, distill, hard_negative_loss, kd_loss, listwise_rank_loss, teacher_beams
from .prune import PruneConfig, layer_sensitivity, prunable_units, prune_
from .grouped import GroupedLinear, channel_shuffle, from_linear, replace_linear_
from .recover import calibration_batches, grouped_variant, progressive_prune
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
    # distill
    "kd_loss", "listwise_rank_loss", "hard_negative_loss", "DistillConfig", "Distiller", "RecDistiller", "teacher_beams", "distill",
    # prune
    "PruneConfig", "prune_", "layer_sensitivity", "prunable_units",
    # grouped
    "GroupedLinear", "channel_shuffle", "from_linear", "replace_linear_",
    # recover (training-based variants)
    "calibration_batches", "progressive_prune", "grouped_variant",
]
