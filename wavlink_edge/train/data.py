"""Training data: the corpus on disk, the frozen backbones' cached outputs, and the sets cut from them.

Whisper-base layers 0..4 and MiniLM are frozen, so their outputs are computed once per clip and caption and
cached in the workdir (frame states fp16 `.npz`, sentence vectors `.npy`); everything after reads the caches.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wavlink_edge.export.model import WavLinkModel
from wavlink_edge.export.to_onnx import torch_export
from wavlink_edge.runtime.audio import decode_audio
from wavlink_edge.runtime.features import clip_features
from wavlink_edge.runtime.session import OnnxSession
from wavlink_edge.runtime.text import TextTokenizer
from wavlink_edge.train.corpus import generate, load_split, real

SEED = 0
CAPTIONS_PER_CLIP = 5
POLICIES = ("trim", "pad")


def build_corpus(corpus: Path, quick: bool, n_train: int, n_test: int) -> None:
    """Generated and real clips into `corpus`, unless an earlier run left them there."""

    if not (corpus / "captions_test.csv").is_file():
        sizes = dict(n_train=24, n_test=8) if quick else dict(n_train=n_train, n_test=n_test)
        generate(corpus, seed=SEED, workers=2, **sizes)
    if not (corpus / "captions_real_test.csv").is_file():
        real.generate(corpus, seed=SEED, limit=6 if quick else None)


def _frozen_onnx(model: WavLinkModel, path: Path) -> Path:
    """ORT runs the frozen layers about 2-3x faster than PyTorch eager on this CPU."""

    class Frozen(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.audio = model.audio

        def forward(self, input_features):
            return self.audio.frames_before_token(input_features)

    if not path.is_file():
        torch_export(Frozen().eval(), (torch.randn(2, model.config.audio.n_mels, 200),), path, ["input_features"],
                     {"input_features": {0: "batch", 2: "frames"}}, 17)
    return path


def cache_audio(model: WavLinkModel, paths: list[str], policy: str, cache: Path, onnx_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Frame states at the token's layer for every clip, fp16, concatenated; and row offsets."""
    if cache.with_suffix(".npz").is_file():
        data = np.load(cache.with_suffix(".npz"))
        return data["states"], data["offsets"]
    from tqdm import tqdm

    sess = OnnxSession(_frozen_onnx(model, onnx_path), name="frozen_layers.onnx")
    chunks, offsets = [], [0]
    for path in tqdm(paths, desc=f"{cache.name}", unit="clip", mininterval=30):
        mel = clip_features(decode_audio(path), model.config.audio.n_mels, policy)
        states = sess.run({"input_features": mel[None]})[0]
        chunks.append(states.astype(np.float16))
        offsets.append(offsets[-1] + states.shape[0])
    states, offsets = np.concatenate(chunks), np.asarray(offsets, dtype=np.int64)
    np.savez(cache.with_suffix(".npz"), states=states, offsets=offsets)
    return states, offsets


def cache_text(model: WavLinkModel, tokenizer_json: Path, texts: list[str], cache: Path) -> np.ndarray:
    """Frozen sentence vectors (before the projector) of every caption; the cache is keyed by the texts."""
    cache = cache.with_name(f"{cache.name}_{hashlib.sha256(chr(0).join(texts).encode()).hexdigest()[:12]}")
    if cache.with_suffix(".npy").is_file():
        return np.load(cache.with_suffix(".npy"))

    tokenizer = TextTokenizer.configured(tokenizer_json, model.config.text.max_length, model.config.text.pad_token_id)
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), 64):
            feeds = tokenizer.feeds(texts[i : i + 64])
            out.append(model.text.pooled(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])).numpy())
    vectors = np.concatenate(out).astype(np.float32) if out else np.zeros((0, model.config.text.backbone["hidden_size"]), np.float32)
    np.save(cache.with_suffix(".npy"), vectors)
    return vectors


class ClipStates:
    """Variable-length cached frame states, batched with a key mask (exact: masked keys get 0 weight).

    The last layer's keys and values of the frames (its first LayerNorm and k/v projections stay frozen)
    are computed once here; a step computes only the token's own key/value, its query, attention and MLP.
    """

    def __init__(self, states: np.ndarray, offsets: np.ndarray, layer=None):
        self.states, self.offsets = states, offsets
        self.lengths = np.diff(offsets)
        self.kv = None
        if layer is not None:
            keys, values = [], []
            with torch.no_grad():
                for start in range(0, len(states), 65536):  # chunks bound the fp32 temporaries
                    normed = layer.self_attn_layer_norm(torch.from_numpy(states[start : start + 65536].astype(np.float32))[None])
                    k, v = layer.self_attn.keys_values(normed)
                    keys.append(k[0].permute(2, 0, 1).to(torch.float16))  # [rows, h, d_head]
                    values.append(v[0].transpose(0, 1).to(torch.float16))
            self.kv = (torch.cat(keys), torch.cat(values))

    def __len__(self) -> int:
        return len(self.lengths)

    def subset(self, idx: np.ndarray, layer=None) -> ClipStates:
        return ClipStates.concat([self], [idx], layer)

    @staticmethod
    def concat(parts: list[ClipStates], idxs: list[np.ndarray], layer=None) -> ClipStates:
        chunks = [p.states[p.offsets[i] : p.offsets[i + 1]] for p, idx in zip(parts, idxs) for i in idx]
        return ClipStates(np.concatenate(chunks), np.concatenate([[0], np.cumsum([len(c) for c in chunks])]), layer)

    def batch(self, idx: np.ndarray) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """((keys [B, h, dh, T], values [B, h, T, dh]) of the frames, key mask [B, T])."""
        longest = int(self.lengths[idx].max())
        keys, values = self.kv
        n_heads, d_head = keys.shape[1], keys.shape[2]
        k = torch.zeros(len(idx), longest, n_heads, d_head)
        v = torch.zeros(len(idx), longest, n_heads, d_head)
        mask = torch.zeros(len(idx), longest, dtype=torch.bool)
        for row, i in enumerate(idx):
            start, n = int(self.offsets[i]), int(self.lengths[i])
            k[row, :n], v[row, :n] = keys[start : start + n], values[start : start + n]
            mask[row, :n] = True
        return (k.permute(0, 2, 3, 1), v.transpose(1, 2)), mask


def caption_rows(vectors: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The CAPTIONS_PER_CLIP caption vectors of each clip in idx, in clip order."""
    return vectors[(idx[:, None] * CAPTIONS_PER_CLIP + np.arange(CAPTIONS_PER_CLIP)).reshape(-1)]


@dataclass
class Features:
    """The cached backbone outputs of one corpus: frame states per (split, policy), caption vectors per split,
    and the zero-shot prompt vectors (len(real.PROMPT_TEMPLATES) rows a class) of the real test and validation
    classes."""
    splits: dict
    states: dict
    texts: dict
    classes: list
    labels: list
    prompts: np.ndarray
    val_classes: list
    val_labels: list
    val_prompts: np.ndarray
    held_out: np.ndarray  # real train rows kept out of the epoch-selection run (real.validation_rows)
    scored: np.ndarray  # of those, the ones validation scores
    train_labels: list  # label and source package of every real train row (the recipe's sampling and loss use them)
    train_packages: list


def audio_features(model: WavLinkModel, corpus: Path, work: Path, pad: str = "all") -> tuple[dict, dict]:
    """(clip lists per split, frame states per (split, policy)), from the cache or computed once. Training uses
    trim; the test splits are also cached padded to 30 s (pad="all"), only the real one (pad="real") or neither
    (pad="none": a padded clip costs ~10x a trimmed one)."""

    splits = {s: load_split(corpus, s) for s in ("train", "test", "real_train", "real_test")}
    states = {}
    for s, policies in (("real_train", ("trim",)), ("real_test", POLICIES if pad != "none" else ("trim",)),
                        ("test", ("trim",)), ("train", ("trim",)), ("test", ("pad",) if pad == "all" else ())):
        for policy in policies:
            states[s, policy] = cache_audio(model, [p for p, _ in splits[s]], policy, work / f"frames_{s}_{policy}",
                                            work / "frozen_layers.onnx")
    return splits, states


def text_features(model: WavLinkModel, tokenizer: Path, corpus: Path, work: Path, splits: dict, states: dict) -> Features:

    texts = {s: cache_text(model, tokenizer, [c for _, caps in splits[s] for c in caps], work / f"text_{s}") for s in splits}
    labels = real.labels(corpus, "test")
    classes = sorted(set(labels))
    prompts = cache_text(model, tokenizer, [p for c in classes for p in real.class_prompts(c)], work / "text_prompts_ensemble")
    # validation files come from the surveyed packages that earlier heads never trained on (sound-icons and
    # tuxpaint-data files occur in the generated corpus), so the committed heads can be scored on the same files
    held_out, scored = real.validation_rows(corpus, packages=set(real.surveyed.LICENCES) - {"sound-icons", "tuxpaint-data"})
    val_labels = [lab for lab, keep in zip(real.labels(corpus, "train"), scored) if keep]
    val_classes = sorted(set(val_labels))
    val_prompts = cache_text(model, tokenizer, [p for c in val_classes for p in real.class_prompts(c)],
                             work / "text_prompts_validation")
    rows = real.metadata(corpus, "train")
    return Features(splits, states, texts, classes, labels, prompts, val_classes, val_labels, val_prompts, held_out, scored,
                    [r["label"] for r in rows], [r["package"] for r in rows])


@dataclass
class TestSets:
    """The test splits: clips[(split, policy)] (split 'real' or 'generated'), caption vectors per split, and
    zs = (prompt vectors, labels, classes) of the real split's zero-shot classification."""
    clips: dict
    texts: dict
    zs: tuple


def test_sets(model: WavLinkModel, tokenizer: Path, corpus: Path, generated: Path, work: Path, pad: str) -> TestSets:
    """The test splits alone (for scoring heads without training): the real test split of `corpus` and the
    generated test split in `generated` (a corpus, or the committed bench/data/wavlink_eval)."""

    states, texts = {}, {}
    for split, directory, name in (("real", corpus, "real_test"), ("generated", generated, "test")):
        clips = load_split(directory, "test" if split == "generated" else name)
        for policy in POLICIES if pad == "all" or (pad == "real" and split == "real") else ("trim",):
            states[split, policy] = ClipStates(*cache_audio(model, [p for p, _ in clips], policy, work / f"frames_{name}_{policy}",
                                                            work / "frozen_layers.onnx"), layer=model.audio.layers[-1])
        texts[split] = cache_text(model, tokenizer, [c for _, caps in clips for c in caps], work / f"text_{name}")
    labels = real.labels(corpus, "test")
    classes = sorted(set(labels))
    prompts = cache_text(model, tokenizer, [p for c in classes for p in real.class_prompts(c)], work / "text_prompts_ensemble")
    return TestSets(states, texts, (prompts, labels, classes))


class TrainingSets:
    """The sets cut from Features: training (generated train clips then real rows), validation (the last tenth of
    the generated train clips; the scored real validation files) and the test splits ((split, policy) ->
    ClipStates). Validation is never the tests; the tests are only read for the card."""

    def __init__(self, f: Features, layer):
        self.f, self.layer = f, layer
        self.n_gen = len(f.splits["train"])
        self.n_val = max(4, self.n_gen // 10)
        self.train_idx, val_idx = np.arange(self.n_gen - self.n_val), np.arange(self.n_gen - self.n_val, self.n_gen)
        self.gen_train, self.real_train = ClipStates(*f.states["train", "trim"]), ClipStates(*f.states["real_train", "trim"])
        self.gen_val = (self.gen_train.subset(val_idx, layer), caption_rows(f.texts["train"], val_idx))
        self.real_val = ((self.real_train.subset(np.flatnonzero(f.scored), layer), f.val_prompts, f.val_labels, f.val_classes)
                         if f.scored.any() else None)
        self.tests = TestSets({("generated" if s == "test" else "real", p): ClipStates(*v, layer=layer)
                               for (s, p), v in f.states.items() if s in ("test", "real_test")},
                              {"generated": f.texts["test"], "real": f.texts["real_test"]}, (f.prompts, f.labels, f.classes))

    def fit(self, real_rows: np.ndarray) -> FitSet:
        """What loop.train trains on: the generated train clips, then these real rows."""
        clips = ClipStates.concat([self.gen_train, self.real_train], [self.train_idx, real_rows], self.layer)
        text = np.concatenate([caption_rows(self.f.texts["train"], self.train_idx), caption_rows(self.f.texts["real_train"], real_rows)])
        return FitSet(clips, text, [self.f.train_labels[i] for i in real_rows], [self.f.train_packages[i] for i in real_rows])


@dataclass
class FitSet:
    """Training clips (generated first, then real), their caption vectors (CAPTIONS_PER_CLIP rows a clip), and the
    label and package of each real clip."""
    clips: ClipStates
    text: np.ndarray
    real_labels: list
    real_packages: list

    @property
    def n_real(self) -> int:
        return len(self.real_labels)

    @property
    def n_generated(self) -> int:  # rows before the first real clip
        return len(self.clips) - self.n_real
