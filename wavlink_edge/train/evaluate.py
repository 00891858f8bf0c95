"""Scoring the heads: caption retrieval and zero-shot classification (train/metrics.py) on the test splits, the
per-epoch validation the loop tracks, and the choice of the served clip policy."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from wavlink_edge.export.model import WavLinkModel
from wavlink_edge.runtime.vectors import truncate
from wavlink_edge.train import metrics
from wavlink_edge.train.data import CAPTIONS_PER_CLIP, POLICIES, ClipStates
from wavlink_edge.train.heads import embed_split, matryoshka_clip_loss


def ensemble_prompts(model: WavLinkModel, vectors: np.ndarray, n_classes: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(ensembled, first-template) class vectors at `dim`: rows of `vectors` are n_templates pooled prompts per
    class; the ensemble is the mean of the prompts' normalised (truncated) embeddings, as in CLIP/CLAP."""
    with torch.no_grad():
        p = model.text.projector(torch.from_numpy(vectors))[:, :dim]
    p = F.normalize(p, dim=-1).reshape(n_classes, -1, dim)
    return F.normalize(p.mean(dim=1), dim=-1).numpy(), p[:, 0].numpy()


def zero_shot_at(model: WavLinkModel, audio: np.ndarray, zs: tuple, dim: int, interval: bool = False) -> tuple[dict, dict]:
    """(prompt-ensemble, first-prompt) zero-shot results at `dim`; zs = (pooled prompt vectors, labels, classes)."""
    vectors, labels, classes = zs
    ens, single = ensemble_prompts(model, vectors, len(classes), dim)
    a = truncate(audio, dim)
    return tuple(metrics.zero_shot(a, truncate(p, dim), labels, classes, interval) for p in (ens, single))


def evaluate(model: WavLinkModel, clips: ClipStates, text_vectors: np.ndarray, zs: tuple | None = None,
             interval: bool = False) -> dict:
    """{'retrieval': {dim: ...}, 'zero_shot': {dim: ...}, 'zero_shot_single': {dim: ...}}: 'zero_shot' uses the
    prompt ensemble, '_single' its first prompt (zs as in zero_shot_at); with interval, bootstrap 95 % intervals."""
    audio, text = embed_split(model, clips, text_vectors)
    dims = model.config.matryoshka_dims
    out = {"retrieval": {str(d): metrics.recall(truncate(audio, d), truncate(text, d), CAPTIONS_PER_CLIP,
                                                interval=interval) for d in dims}}
    if zs is not None:
        out["zero_shot"], out["zero_shot_single"] = {}, {}
        for d in dims:
            out["zero_shot"][str(d)], out["zero_shot_single"][str(d)] = zero_shot_at(model, audio, zs, d, interval)
    return out


def evaluate_tests(model: WavLinkModel, tests, interval: bool = True) -> dict:
    """{'real'|'generated': {policy: evaluate(...)}} over the test splits (data.TestSets)."""
    return {split: {p: evaluate(model, tests.clips[split, p], tests.texts[split], tests.zs if split == "real" else None, interval)
                    for p in POLICIES if (split, p) in tests.clips}
            for split in ("real", "generated")}


def validation_score(scores: dict) -> float:
    """One number for a validation pass: real-validation zero-shot top-1 plus the generated split's mean R@1."""
    return scores.get("real_val_zero_shot", 0.0) + (scores["val_t2a_r1"] + scores["val_a2t_r1"]) / 2


@dataclass
class Validation:
    """What the curves track each epoch: generated clips held out of training (loss and R@1 both ways at full
    width) and, when given, the real validation files (zero-shot top-1 over their classes, prompt ensemble)."""
    clips: ClipStates
    text: np.ndarray
    real: tuple | None = None  # (ClipStates, pooled prompt vectors, labels, classes)

    @torch.no_grad()
    def __call__(self, model: WavLinkModel) -> dict:
        dims = list(model.config.matryoshka_dims)
        audio, text = embed_split(model, self.clips, self.text)
        first_caption = torch.from_numpy(text[::CAPTIONS_PER_CLIP])
        out = {"val_loss": matryoshka_clip_loss(torch.from_numpy(audio), first_caption, model.logit_scale, dims).item()}
        recall = metrics.recall(audio, text, CAPTIONS_PER_CLIP)
        out |= {"val_t2a_r1": recall["t2a"]["R@1"], "val_a2t_r1": recall["a2t"]["R@1"]}
        if self.real is not None:
            clips, prompts, labels, classes = self.real
            audio, _ = embed_split(model, clips, self.text[:0])
            out["real_val_zero_shot"] = zero_shot_at(model, audio, (prompts, labels, classes), dims[0])[0]["top1"]
        return out


def choose_policy(real_eval: dict, trained_policy: str, n_clips: int, dim: int) -> str:
    """The policy the heads were trained on, unless another beats it on the real split's zero-shot top-1 (then
    R@1) by more than one clip: on a small test split one clip is noise, and trim is also ~4x faster."""
    def score(policy):
        res = real_eval[policy]
        recall = res["retrieval"][str(dim)]
        return res["zero_shot"][str(dim)]["top1"], recall["t2a"]["R@1"] + recall["a2t"]["R@1"]

    best = max((p for p in POLICIES if p in real_eval), key=score)
    return best if score(best)[0] - score(trained_policy)[0] > 1.0 / n_clips + 1e-9 else trained_policy
