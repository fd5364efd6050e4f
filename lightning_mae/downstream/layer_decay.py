"""Layer-wise learning-rate decay for fine-tuning a ViT (BEiT / MAE recipe).

Layer 0 is the embedding (patch projection, cls token, positional embedding), layer ``i + 1`` is
block ``i``, and everything after the blocks (final norms, the classifier or a dense head) is layer
``depth + 1``. Layer ``l`` trains at ``lr * layer_decay ** (depth + 1 - l)``: the head at full rate,
the embedding at the smallest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

_EMBEDDING = re.compile(r"(^|\.)(cls_token|pos_embed|patch_embed)(\.|$)")
_BLOCK = re.compile(r"(^|\.)blocks\.(\d+)\.")


def layer_id(name: str, depth: int, encoder_prefix: str = "") -> int:
    """The layer a parameter belongs to (see the module docstring); only names under ``encoder_prefix``
    can be in the embedding or the blocks."""
    if not name.startswith(encoder_prefix):
        return depth + 1
    rest = name[len(encoder_prefix):]
    if _EMBEDDING.match(rest):
        return 0
    block = _BLOCK.match(rest)
    return int(block.group(2)) + 1 if block else depth + 1


def param_groups_layer_decay(
    model: nn.Module,
    depth: int,
    weight_decay: float,
    layer_decay: float,
    no_weight_decay: Iterable[str] = (),
    encoder_prefix: str = "",
) -> list[dict]:
    """Optimizer groups, one per (layer, decay / no decay), each with an ``lr_scale``.

    No weight decay on 1-D parameters (biases, norms) and on the names in ``no_weight_decay``
    (given relative to ``encoder_prefix``, e.g. ``cls_token``, ``pos_embed``).
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    skip = {encoder_prefix + n for n in no_weight_decay}
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not (param.ndim <= 1 or name in skip)
        layer = layer_id(name, depth, encoder_prefix)
        group = groups.setdefault((layer, decay), {
            "params": [], "param_names": [], "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": layer_decay ** (depth + 1 - layer),
        })
        group["params"].append(param)
        group["param_names"].append(name)
    return [groups[key] for key in sorted(groups)]
