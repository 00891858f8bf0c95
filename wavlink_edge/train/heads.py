"""What is trained and how it is scored: the trainable heads on the frozen backbones, their forward pass over
cached frame states, the Matryoshka CLIP loss, and the heads file.

The global token joins the frames at the input of the last encoder layer (config `global_token_layer` = 5: the
frozen layers never see it, so their frame states can be cached; frames' outputs of the last layer are never
used, so only the token's query runs). Trained: the token, that layer's query and output projections, MLP and
LayerNorms (its key/value projections stay frozen: training them would recompute every frame's keys each step,
~100x the cost on this CPU), the final LayerNorm, both projectors and the temperature.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wavlink_edge.export.backbones import build_default_base
from wavlink_edge.export.model import WavLinkModel

DEMO_NAME = "wavlink-base-demo"
TRAINED_TEXT = ("the global token (inserted at the input of the last encoder layer), that layer's query and output "
                "projections, MLP and LayerNorms, the final LayerNorm, both projectors and the temperature; "
                "Whisper layers 0-4, the last layer's key/value projections and MiniLM stay frozen")


def base_model() -> tuple[WavLinkModel, Path]:
    """The real frozen backbones with seeded untrained heads (the starting point), the token at the last layer."""

    model, tokenizer = build_default_base(heads=None)
    model.config.global_token_layer = model.audio.token_layer = model.config.audio.n_layers - 1
    return model, tokenizer


def matryoshka_clip_loss(audio: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, dims: list[int],
                         not_negative: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP InfoNCE (both directions) at every Matryoshka prefix, averaged; prefixes re-normalised.
    `not_negative` [B, B] (symmetric, False on the diagonal): pairs left out of each other's softmax, e.g. two
    recordings of one class whose captions are phrasings of the same label."""
    target = torch.arange(audio.shape[0])
    scale = logit_scale.clamp(max=math.log(100)).exp()
    losses = []
    for d in dims:
        logits = scale * F.normalize(audio[:, :d], dim=-1) @ F.normalize(text[:, :d], dim=-1).T
        if not_negative is not None:
            logits = logits.masked_fill(not_negative, float("-inf"))
        losses.append((F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2)
    return torch.stack(losses).mean()


def trainable_parameters(model: WavLinkModel) -> list[torch.nn.Parameter]:
    layer = model.audio.layers[-1]
    return [model.audio.global_token, *layer.self_attn.q_proj.parameters(), *layer.self_attn.out_proj.parameters(),
            *layer.final_layer_norm.parameters(), *layer.fc1.parameters(), *layer.fc2.parameters(),
            *model.audio.layer_norm.parameters(), *model.audio.projector.parameters(),
            *model.text.projector.parameters(), model.logit_scale]


def audio_vectors(model: WavLinkModel, clips, idx: np.ndarray) -> torch.Tensor:
    """Projected (unnormalised) audio vectors of clips[idx] (data.ClipStates): exactly AudioTower.pool over
    [token, frames]."""
    (k, v), mask = clips.batch(idx)
    layer = model.audio.layers[-1]
    token = model.audio.global_token.expand(len(idx), 1, -1)
    tk, tv = layer.self_attn.keys_values(layer.self_attn_layer_norm(token))  # the token attends to itself too
    kv = (torch.cat([tk, k], dim=3), torch.cat([tv, v], dim=2))
    mask = torch.cat([torch.ones(len(idx), 1, dtype=torch.bool), mask], dim=1)
    state = layer(token, query_index=0, key_mask=mask, kv=kv)[:, 0]
    return model.audio.projector(model.audio.layer_norm(state))


@torch.no_grad()
def embed_split(model: WavLinkModel, clips, text_vectors: np.ndarray, batch: int = 64):
    """(normalised audio embeddings of every clip, normalised text embeddings of the pooled caption vectors)."""
    model.eval()
    audio = torch.cat([F.normalize(audio_vectors(model, clips, np.arange(i, min(i + batch, len(clips)))), dim=-1)
                       for i in range(0, len(clips), batch)])
    text = F.normalize(model.text.projector(torch.from_numpy(text_vectors)), dim=-1)
    return audio.numpy(), text.numpy()


def save_heads(model: WavLinkModel, recipe, clip_policy: str, path: Path) -> Path:
    """The trained parameters, fp16 (a few MB; the model is evaluated *after* this rounding), with the served
    policy, the token layer and the recipe in the metadata."""
    from safetensors.torch import save_file

    trained = {id(p) for p in trainable_parameters(model)}
    names = [n for n, p in model.named_parameters() if id(p) in trained]
    state = model.state_dict()
    tensors = {n: state[n].detach().to(torch.float16).contiguous() for n in names}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"name": DEMO_NAME, "clip_policy": clip_policy,
                                            "global_token_layer": str(model.config.global_token_layer),
                                            "recipe": json.dumps(asdict(recipe))})
    return path


def set_heads_policy(heads: Path, policy: str) -> None:
    """Rewrite the served policy in a heads file's metadata; the tensors are copied unchanged."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(heads), "np") as f:
        meta = dict(f.metadata() or {})
    if meta.get("clip_policy") != policy:
        save_file(load_file(str(heads)), str(heads), metadata={**meta, "clip_policy": policy})
