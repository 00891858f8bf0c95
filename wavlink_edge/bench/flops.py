"""FLOPs of one encoder pass, computed from the model dims, and a counted cross-check.

Only matrix products and convolutions are counted (2 FLOPs per multiply-accumulate): LayerNorm, GELU
and softmax are a few percent at these sizes and are what `torch.utils.flop_counter` leaves out too,
so the analytic figure and the counted one agree exactly when the formula is right.
"""
from __future__ import annotations


def audio_encoder_flops(frames: int, n_mels: int, d_model: int, n_layers: int, ffn_dim: int,
                        embed_dim: int | None = None, global_token: bool = True, prune_last_layer: bool = True,
                        token_layer: int = 0) -> int:
    """One clip through the audio tower. WavLink: the global token joins the sequence at the input of
    layer `token_layer`, the last layer computes only the token's query, projector on top.
    CTranslate2's Whisper.encode: neither."""
    if frames % 2:
        raise ValueError(f"frames must be even (stride-2 conv), got {frames}")
    d, f = d_model, ffn_dim
    flops = 2 * n_mels * 3 * d * frames + 2 * d * 3 * d * (frames // 2)  # conv1, conv2 (kernel 3)
    positions = frames // 2

    def layer(queries: int, keys: int) -> int:
        proj = 2 * queries * d * d * 2 + 2 * keys * d * d * 2  # q, out (per query); k, v (every position)
        attention = 2 * queries * keys * d * 2  # q @ k^T and weights @ v
        return proj + attention + 2 * queries * d * f * 2  # + fc1, fc2

    for index in range(n_layers):
        keys = positions + (1 if global_token and index >= token_layer else 0)
        last = index == n_layers - 1
        flops += layer(1 if last and prune_last_layer else keys, keys)
    if embed_dim:
        flops += 2 * d * embed_dim
    return int(flops)


def bert_flops(seq_len: int, hidden: int, n_layers: int, intermediate: int, embed_dim: int | None = None) -> int:
    """One sentence of `seq_len` tokens (padding included: it is computed) through a BERT encoder."""
    s, h = seq_len, hidden
    per_layer = 2 * s * h * h * 4 + 2 * s * s * h * 2 + 2 * s * h * intermediate * 2
    return int(n_layers * per_layer + (2 * h * embed_dim if embed_dim else 0))


def wavlink_audio_flops(config: dict, frames: int, peer: bool = False) -> int:
    """From an export's config.json (dict). peer=True: the CTranslate2 Whisper encoder on the same weights."""
    a = config["audio"]
    return audio_encoder_flops(frames, a["n_mels"], a["d_model"], a["n_layers"], a["ffn_dim"],
                               embed_dim=None if peer else config["embed_dim"],
                               global_token=not peer, prune_last_layer=not peer,
                               token_layer=int(config.get("global_token_layer", 0)))


def wavlink_text_flops(config: dict, seq_len: int, peer: bool = False) -> int:
    b = config["text"]["backbone"]
    return bert_flops(seq_len, b["hidden_size"], b["num_hidden_layers"], b["intermediate_size"],
                      embed_dim=None if peer else config["embed_dim"])


def counted_flops(module, *args) -> int:
    """FLOPs torch itself counts for one forward (matmul/conv only): the cross-check."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(*args)
    return int(counter.get_total_flops())
