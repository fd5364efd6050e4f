"""Load a pretrained encoder from our Lightning checkpoints or from the official MAE ``.pth`` files.

Two formats are understood:

* ours (``MAEPretraining``'s ``.ckpt``): ``state_dict`` keys ``backbone.*`` and ``mae_config`` (the
  backbone's constructor arguments);
* the official facebookresearch/mae files: ``{"model": state_dict}`` with the encoder at the top
  level (``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.N.*``, ``norm.*``), the
  decoder under ``decoder_*`` / ``mask_token`` (pretrained) or ``fc_norm`` / ``head`` (fine-tuned).
  They carry no architecture, so it is read off the tensor shapes.

Anything else that does not fit the encoder raises a ``ValueError`` that lists the offending keys.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_mae.downstream.encoder import ENCODER_KEYS, ViTEncoder, resize_grid

# Keys of a checkpoint that belong to the pretraining decoder or a classifier, never to the encoder.
_IGNORED_PREFIXES = ("decoder_", "mask_token", "head.", "fc_norm.")
# Heads per width of the official ViT presets (the count is not visible in the weights' shapes).
_OFFICIAL_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}


def load_checkpoint_file(path: str | Path, mmap: bool | None = None) -> Any:
    """``torch.load`` of a checkpoint onto the CPU (tensors only); a missing file, or one that torch cannot
    read, raises an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # pickle errors, truncated zip files, foreign formats
        raise ValueError(f"cannot read checkpoint {path}: {err}") from err


def backbone_state(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ``backbone.*`` weights of an ``MAEPretraining`` state dict, under the backbone's own names."""
    return {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Encoder weights (official key names) and the encoder's architecture from a checkpoint file."""
    ckpt = load_checkpoint_file(path)
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a dict of weights")
    if "state_dict" in ckpt and any(k.startswith("backbone.") for k in ckpt["state_dict"]):
        state = backbone_state(ckpt["state_dict"])
        config = ckpt.get("mae_config") or infer_config(state, path)
    else:
        state = ckpt.get("model", ckpt.get("state_dict", ckpt))
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise ValueError(f"checkpoint {path} has no state dict under 'model', 'state_dict' or the top level")
        # DDP / torch.compile wrappers prefix every key; strip them.
        for prefix in ("module.", "_orig_mod."):
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
        config = infer_config(state, path)
    encoder_state = {k: v for k, v in state.items() if not k.startswith(_IGNORED_PREFIXES)}
    return encoder_state, {k: config[k] for k in ENCODER_KEYS if k in config}


def infer_config(state: dict[str, Tensor], path: str | Path = "<state dict>") -> dict[str, Any]:
    """The encoder's architecture from the shapes of an official-format state dict."""
    needed = ("patch_embed.proj.weight", "pos_embed", "cls_token")
    missing = [k for k in needed if k not in state]
    if missing:
        raise ValueError(
            f"checkpoint {path} is not a ViT/MAE encoder checkpoint: missing keys {missing}; "
            f"its first keys are {sorted(state)[:8]}"
        )
    embed_dim, in_chans, patch_size, _ = state["patch_embed.proj.weight"].shape
    num_tokens = state["pos_embed"].shape[1]
    grid = math.isqrt(num_tokens - 1)
    if grid * grid != num_tokens - 1:
        raise ValueError(f"checkpoint {path}: pos_embed of {num_tokens} tokens is not 1 cls + a square grid")
    depth = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("blocks.")), default=-1)
    mlp_hidden = state.get("blocks.0.mlp.fc1.weight", torch.empty(4 * embed_dim, 0)).shape[0]
    return dict(img_size=grid * patch_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                depth=depth, num_heads=_OFFICIAL_HEADS.get(embed_dim, max(1, embed_dim // 64)),
                mlp_ratio=mlp_hidden / embed_dim)


def resize_pos_embed(pos_embed: Tensor, grid: int) -> Tensor:
    """``[1, 1 + g*g, D]`` -> ``[1, 1 + grid*grid, D]``: bicubic resize of the patch part (fine-tuning at
    another resolution, as in the official ``interpolate_pos_embed``)."""
    old = math.isqrt(pos_embed.shape[1] - 1)
    if old == grid:
        return pos_embed
    patch = resize_grid(pos_embed[:, 1:].float(), old, (grid, grid)).to(pos_embed.dtype)
    return torch.cat([pos_embed[:, :1], patch], dim=1)


def load_encoder_weights(encoder: ViTEncoder, state: dict[str, Tensor], source: str = "checkpoint") -> None:
    """Copy ``state`` into ``encoder``; any missing, unexpected or mis-shaped key is an error naming them all.

    ``fc_norm`` (global pooling) starts fresh, and its ``norm`` is then allowed to go unused, as in the
    official fine-tuning code.
    """
    state = dict(state)
    if "pos_embed" in state and state["pos_embed"].shape != encoder.pos_embed.shape:
        if state["pos_embed"].shape[-1] == encoder.pos_embed.shape[-1]:
            state["pos_embed"] = resize_pos_embed(state["pos_embed"], encoder.grid)
    own = encoder.state_dict()
    optional = {k for k in own if k.startswith("fc_norm.")}
    unused_ok = {"norm.weight", "norm.bias"} if encoder.global_pool == "avg" else set()
    missing = sorted(set(own) - set(state) - optional)
    unexpected = sorted(set(state) - set(own) - unused_ok)
    mismatched = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs encoder {tuple(own[k].shape)}"
                        for k in set(state) & set(own) if state[k].shape != own[k].shape)
    if missing or unexpected or mismatched:
        parts = [f"{name} {keys}" for name, keys in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
                 if keys]
        raise ValueError(f"{source} does not fit the encoder {encoder.config}: " + "; ".join(parts))
    encoder.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def load_encoder(path: str | Path, **options: Any) -> ViTEncoder:
    """Build a ``ViTEncoder`` with a checkpoint's architecture and weights.

    ``options`` are further ``ViTEncoder`` arguments (``drop_path_rate``, ``global_pool``, or an
    ``img_size`` to fine-tune at another resolution); a ``num_heads`` here overrides the official
    files' guess from the width.
    """
    state, config = read_checkpoint(path)
    encoder = ViTEncoder(**{**config, **options})
    load_encoder_weights(encoder, state, source=f"checkpoint {path}")
    return encoder


def save_official(encoder_state: dict[str, Tensor], path: str | Path) -> None:
    """Write weights in the official MAE layout (``{"model": state_dict}``), e.g. to share an encoder
    with code written for the published checkpoints."""
    torch.save({"model": {k: v.detach().cpu() for k, v in encoder_state.items()}}, path)
