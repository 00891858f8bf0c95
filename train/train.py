"""Train the WavLink-base demo heads on the generated corpus, from scratch, in one command.

    python train/train.py --workdir work_cache/train            # corpus -> features -> train -> card
    python train/train.py --workdir /tmp/t --tiny               # tens of clips, seconds (CI)

Whisper-base and MiniLM stay frozen; their outputs are cached once. Two modes are trained and compared:
  (a) projectors only: the global token's final state is fixed, only the two projectors learn;
  (b) the last encoder layer learns too: only the token's output of that layer is used, so the layer acts
      as a learned attention pooler over the cached penultimate states (keys/values from every frame).
Loss: Matryoshka CLIP InfoNCE at 512/256/128/64 with a learnable temperature, AdamW lr 1e-4.
The better mode by test R@1 is written to export/weights/ (fp16 safetensors) with a model card.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wavlink_edge.export.backbones import DEMO_HEADS, build_default_base
from wavlink_edge.export.model import WavLinkModel

SEED = 0
CAPTIONS_PER_CLIP = 5
DEMO_NAME = "wavlink-base-demo"
MODE_TEXT = {
    "a": "projectors only (global-token state fixed)",
    "b": "projectors + the last layer's query and output projections, MLP and final LayerNorm: a learned "
         "attention pooler over frozen, cached keys/values of the penultimate states",
}


@dataclass
class Recipe:
    mode: str = "b"
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-4
    weight_decay: float = 0.01
    clip_policy: str = "trim"
    seed: int = SEED


# ---------------------------------------------------------------------------------------------------
# Frozen-backbone caches


def _penultimate_onnx(model: WavLinkModel, path: Path) -> Path:
    """ORT runs the frozen layers 0..n-2 about 2-3x faster than PyTorch eager on this CPU."""
    from wavlink_edge.export.to_onnx import torch_export

    class Penultimate(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.audio = model.audio

        def forward(self, input_features):
            return self.audio.penultimate_states(input_features)

    if not path.is_file():
        torch_export(Penultimate().eval(), (torch.randn(2, model.config.audio.n_mels, 200),), path, ["input_features"],
                      {"input_features": {0: "batch", 2: "frames"}}, 17)
    return path


def cache_audio(model: WavLinkModel, paths: list[str], policy: str, cache: Path, onnx_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate states of every clip (global token included), fp16, concatenated; and row offsets."""
    if cache.with_suffix(".npz").is_file():
        data = np.load(cache.with_suffix(".npz"))
        return data["states"], data["offsets"]
    from tqdm import tqdm

    from wavlink_edge.runtime.audio import decode_audio
    from wavlink_edge.runtime.features import clip_features
    from wavlink_edge.runtime.session import OnnxSession

    sess = OnnxSession(_penultimate_onnx(model, onnx_path), name="penultimate.onnx")
    chunks, offsets = [], [0]
    for path in tqdm(paths, desc=f"penultimate states ({policy})", unit="clip"):
        mel = clip_features(decode_audio(path), model.config.audio.n_mels, policy)
        states = sess.run({"input_features": mel[None]})[0]
        chunks.append(states.astype(np.float16))
        offsets.append(offsets[-1] + states.shape[0])
    states, offsets = np.concatenate(chunks), np.asarray(offsets, dtype=np.int64)
    np.savez(cache.with_suffix(".npz"), states=states, offsets=offsets)
    return states, offsets


def cache_text(model: WavLinkModel, tokenizer_json: Path, texts: list[str], cache: Path) -> np.ndarray:
    """Frozen sentence vectors (before the projector) of every caption."""
    if cache.with_suffix(".npy").is_file():
        return np.load(cache.with_suffix(".npy"))
    from wavlink_edge.runtime.text import TextTokenizer

    tokenizer = TextTokenizer.configured(tokenizer_json, model.config.text.max_length, model.config.text.pad_token_id)
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), 64):
            feeds = tokenizer.feeds(texts[i : i + 64])
            out.append(model.text.pooled(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])).numpy())
    vectors = np.concatenate(out).astype(np.float32)
    np.save(cache.with_suffix(".npy"), vectors)
    return vectors


# ---------------------------------------------------------------------------------------------------
# Training


class ClipStates:
    """Variable-length cached penultimate states, batched with a key mask (exact: masked keys get 0 weight).

    The last layer's keys and values (its LayerNorm and k/v projections stay frozen in both modes) are
    computed once here, so a training step only runs the global token's query, attention and MLP: training
    the k/v projections too would cost ~100x more per step on this CPU (every frame, forward and backward).
    """

    def __init__(self, states: np.ndarray, offsets: np.ndarray, layer=None):
        self.states, self.offsets = states, offsets
        self.lengths = np.diff(offsets)
        self.token_states = states[offsets[:-1]]  # the global token sits first
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

    def subset(self, idx: np.ndarray, layer=None) -> "ClipStates":
        chunks = [self.states[self.offsets[i] : self.offsets[i + 1]] for i in idx]
        return ClipStates(np.concatenate(chunks), np.concatenate([[0], np.cumsum([len(c) for c in chunks])]), layer)

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """(token states [B, 1, d], (keys [B, h, dh, T], values [B, h, T, dh]), key mask [B, T])."""
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
        token = torch.from_numpy(self.token_states[idx].astype(np.float32))[:, None]
        return token, (k.permute(0, 2, 3, 1), v.transpose(1, 2)), mask


def matryoshka_clip_loss(audio: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """CLIP InfoNCE (both directions) at every Matryoshka prefix, averaged; prefixes re-normalised."""
    target = torch.arange(audio.shape[0])
    scale = logit_scale.clamp(max=math.log(100)).exp()
    losses = []
    for d in dims:
        logits = scale * F.normalize(audio[:, :d], dim=-1) @ F.normalize(text[:, :d], dim=-1).T
        losses.append((F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2)
    return torch.stack(losses).mean()


def trainable_parameters(model: WavLinkModel, mode: str) -> list[torch.nn.Parameter]:
    params = [*model.audio.projector.parameters(), *model.text.projector.parameters(), model.logit_scale]
    if mode == "b":
        layer = model.audio.layers[-1]
        params += [*layer.self_attn.q_proj.parameters(), *layer.self_attn.out_proj.parameters(),
                   *layer.final_layer_norm.parameters(), *layer.fc1.parameters(), *layer.fc2.parameters(),
                   *model.audio.layer_norm.parameters()]
    return params


def audio_vectors(model: WavLinkModel, clips: ClipStates, idx: np.ndarray) -> torch.Tensor:
    """Projected (unnormalised) audio vectors of clips[idx] from their cached states."""
    token, kv, mask = clips.batch(idx)
    state = model.audio.layers[-1](token, query_index=0, key_mask=mask, kv=kv)[:, 0]
    return model.audio.projector(model.audio.layer_norm(state))


@torch.no_grad()
def embed_split(model: WavLinkModel, clips: ClipStates, text_vectors: np.ndarray, batch: int = 64):
    model.eval()
    audio = torch.cat([F.normalize(audio_vectors(model, clips, np.arange(i, min(i + batch, len(clips)))), dim=-1)
                       for i in range(0, len(clips), batch)])
    text = F.normalize(model.text.projector(torch.from_numpy(text_vectors)), dim=-1)
    return audio.numpy(), text.numpy()


def train(model: WavLinkModel, recipe: Recipe, train_clips: ClipStates, train_text: np.ndarray,
          val_clips: ClipStates, val_text: np.ndarray, log=print) -> dict:
    """Returns per-epoch curves. Batches group clips of similar length so little padding is computed."""
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    params = trainable_parameters(model, recipe.mode)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    dims = list(model.config.matryoshka_dims)
    by_length = np.argsort(train_clips.lengths, kind="stable")
    batches = [by_length[i : i + recipe.batch_size] for i in range(0, len(by_length), recipe.batch_size)]
    batches = [b for b in batches if len(b) > 1]
    curves = {"epoch": [], "train_loss": [], "val_loss": [], "val_t2a_r1": [], "seconds": []}
    start = time.perf_counter()
    for epoch in range(recipe.epochs):
        model.train()
        losses = []
        for b in rng.permutation(len(batches)):
            idx = batches[b]
            caption = rng.integers(0, CAPTIONS_PER_CLIP, size=len(idx))
            text = model.text.projector(torch.from_numpy(train_text[idx * CAPTIONS_PER_CLIP + caption]))
            loss = matryoshka_clip_loss(audio_vectors(model, train_clips, idx), text, model.logit_scale, dims)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        val_loss, r1 = validation(model, val_clips, val_text, dims)
        for key, value in zip(curves, (epoch + 1, float(np.mean(losses)), val_loss, r1, time.perf_counter() - start)):
            curves[key].append(value)
        log(f"mode {recipe.mode} epoch {epoch + 1}/{recipe.epochs}: train {np.mean(losses):.4f} val {val_loss:.4f} "
            f"val T2A R@1 {r1:.3f} ({time.perf_counter() - start:.0f} s)")
    model.eval()
    return curves


@torch.no_grad()
def validation(model: WavLinkModel, clips: ClipStates, text_vectors: np.ndarray, dims: list[int]) -> tuple[float, float]:
    audio, text = embed_split(model, clips, text_vectors)
    first_caption = torch.from_numpy(text[::CAPTIONS_PER_CLIP])
    loss = matryoshka_clip_loss(torch.from_numpy(audio), first_caption, model.logit_scale, dims).item()
    return loss, retrieval(audio, text)["t2a"]["R@1"]


# ---------------------------------------------------------------------------------------------------
# Evaluation


def retrieval(audio: np.ndarray, text: np.ndarray, dim: int | None = None, ks=(1, 5, 10)) -> dict:
    """T2A and A2T recall@k (train.metrics, the Clotho protocol); text rows are CAPTIONS_PER_CLIP per clip."""
    from wavlink_edge.runtime.vectors import truncate
    from wavlink_edge.train.metrics import retrieval as retrieval_metrics

    if dim is not None:
        audio, text = truncate(audio, dim), truncate(text, dim)
    metrics = retrieval_metrics(audio, text, np.arange(text.shape[0]) // CAPTIONS_PER_CLIP)
    return {d: {f"R@{k}": metrics[f"{d}_r{k}"] for k in ks} for d in ("t2a", "a2t")}


def chance(n_clips: int, ks=(1, 5, 10)) -> dict:
    n_caps = n_clips * CAPTIONS_PER_CLIP
    a2t = {f"R@{k}": 1 - math.comb(n_caps - CAPTIONS_PER_CLIP, k) / math.comb(n_caps, k) for k in ks}
    return {"t2a": {f"R@{k}": k / n_clips for k in ks}, "a2t": a2t}


def evaluate(model: WavLinkModel, clips: ClipStates, text_vectors: np.ndarray) -> dict:
    audio, text = embed_split(model, clips, text_vectors)
    return {str(d): retrieval(audio, text, d) for d in model.config.matryoshka_dims}


# ---------------------------------------------------------------------------------------------------
# Outputs


def save_heads(model: WavLinkModel, mode: str, recipe: Recipe, path: Path) -> Path:
    from safetensors.torch import save_file

    trained = {id(p) for p in trainable_parameters(model, mode)}
    # The seeded global token ships too: the heads were trained against this exact token.
    names = ["audio.global_token"] + [n for n, p in model.named_parameters() if id(p) in trained]
    state = model.state_dict()
    # fp16 keeps the file a few MB; the model is evaluated *after* this rounding (see main).
    tensors = {n: state[n].detach().to(torch.float16).contiguous() for n in names}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"name": DEMO_NAME, "clip_policy": recipe.clip_policy, "mode": mode,
                                            "recipe": json.dumps(asdict(recipe))})
    return path


def plot_curves(curves: dict[str, dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_r1) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, c in curves.items():
        ax_loss.plot(c["epoch"], c["train_loss"], label=f"({mode}) train")
        ax_loss.plot(c["epoch"], c["val_loss"], "--", label=f"({mode}) val")
        ax_r1.plot(c["epoch"], c["val_t2a_r1"], label=f"({mode}) val T2A R@1")
    ax_loss.set(xlabel="epoch", ylabel="Matryoshka CLIP loss", title="loss")
    ax_r1.set(xlabel="epoch", ylabel="R@1", title="validation text→audio R@1")
    for ax in (ax_loss, ax_r1):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def model_card(results: dict, path: Path) -> Path:
    r = results
    lines = [
        f"# {DEMO_NAME}: WavLink-base demo heads trained in this repo",
        "",
        "**This is a demo model trained on generated data (train/corpus: synthetic speech, MIDI music, "
        "recorded notification and game sounds, noise), not the paper's model and not trained on real-world "
        "audio captions.** It exists so retrieval figures in this repo measure something. Backbones are real "
        "and frozen: Whisper-base encoder (OpenAI, MIT, CTranslate2 weights) and all-MiniLM-L6-v2 (Apache-2.0).",
        "",
        "## Recipe",
        f"- shipped mode: **({r['shipped_mode']})** — {MODE_TEXT[r['shipped_mode']]}; "
        f"chosen over ({'a' if r['shipped_mode'] == 'b' else 'b'}) by test R@1 (T2A + A2T) at full width, trim policy",
        f"- input-length policy trained and served: **{r['recipe']['clip_policy']}** "
        "(encoder runs only on the frames holding audio, >= 1 s)",
        f"- Matryoshka CLIP loss at {r['dims']}, learnable temperature; AdamW lr {r['recipe']['lr']}, "
        f"weight decay {r['recipe']['weight_decay']}, batch {r['recipe']['batch_size']}, "
        f"{r['recipe']['epochs']} epochs, seed {r['recipe']['seed']}",
        f"- data: {r['counts']['train']} train clips ({r['counts']['val']} of them held out for validation curves), "
        f"{r['counts']['test']} test clips whose source combinations never occur in training; 5 captions per clip",
        f"- weights: `{DEMO_HEADS.name}` (fp16 safetensors, {r['heads_bytes'] / 1e6:.1f} MB), curves: `training_curves.png`",
        f"- whole pipeline: {r['seconds']['total']:.0f} s on this machine ({r['seconds']}); "
        + ("corpus reused from `--corpus` (its generation is timed in its DATA_CARD); " if r.get("corpus_reused") else "")
        + (f"load average at start/end {r['load_average']} on {os.cpu_count()} cores (other jobs shared the machine "
           "when above the core count)" if r.get("load_average") else "load average not recorded"),
        "",
        "## Test split retrieval (R@1 / R@5 / R@10, %)",
        "",
        "| heads | policy | dim | T2A R@1 | T2A R@5 | T2A R@10 | A2T R@1 | A2T R@5 | A2T R@10 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, policy, table in r["tables"]:
        for dim, m in table.items():
            cells = [f"{100 * m[d][f'R@{k}']:.1f}" for d in ("t2a", "a2t") for k in (1, 5, 10)]
            lines.append(f"| {label} | {policy} | {dim} | " + " | ".join(cells) + " |")
    ch = r["chance"]
    lines.append("| chance | - | any | " + " | ".join(f"{100 * ch[d][f'R@{k}']:.1f}" for d in ("t2a", "a2t") for k in (1, 5, 10)) + " |")
    lines += ["", "Produced by `python train/train.py` (numbers above are from its last run; `results.json` in the workdir).", ""]
    path.write_text("\n".join(lines))
    return path


# ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="work_cache/train")
    parser.add_argument("--corpus", help="existing corpus directory (default: generate into WORKDIR/corpus)")
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--n-test", type=int, default=600, help="600 = the committed bench/data/wavlink_eval split")
    parser.add_argument("--epochs", type=int, default=Recipe.epochs)
    parser.add_argument("--modes", default="a,b")
    parser.add_argument("--tiny", action="store_true", help="tens of clips, a few epochs: the CI smoke run")
    parser.add_argument("--out", default=str(DEMO_HEADS.parent), help="where the heads, card and curves go")
    parser.add_argument("--render-card", action="store_true", help="only re-render the card from WORKDIR/results.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    work = Path(args.workdir)
    if args.render_card:
        return _write_outputs(json.loads((work / "results.json").read_text()), Path(args.out), None)
    load_start = os.getloadavg()[0]
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    seconds = {}

    from wavlink_edge.train.corpus import generate, load_split

    corpus = Path(args.corpus) if args.corpus else work / "corpus"
    if not (corpus / "captions_test.csv").is_file():
        if args.tiny:
            generate(corpus, n_train=40, n_test=16, seed=SEED, workers=2)
        else:
            generate(corpus, n_train=args.n_train, n_test=args.n_test, seed=SEED, workers=2)
    seconds["corpus"] = time.perf_counter() - t0

    model, tokenizer = build_default_base(heads=None)  # seeded untrained heads: the starting point
    initial_state = {k: v.clone() for k, v in model.state_dict().items()}
    splits = {s: load_split(corpus, s) for s in ("train", "test")}
    t = time.perf_counter()
    onnx_path = work / "penultimate.onnx"
    recipe = Recipe(epochs=3 if args.tiny else args.epochs, batch_size=16 if args.tiny else Recipe.batch_size)
    last = model.audio.layers[-1]
    states = {s: ClipStates(*cache_audio(model, [p for p, _ in splits[s]], recipe.clip_policy, work / f"states_{s}_{recipe.clip_policy}", onnx_path),
                            layer=last if s == "test" else None)
              for s in ("train", "test")}
    states["test_pad"] = ClipStates(*cache_audio(model, [p for p, _ in splits["test"]], "pad", work / "states_test_pad", onnx_path),
                                    layer=last)
    seconds["audio_features"] = time.perf_counter() - t
    t = time.perf_counter()
    texts = {s: cache_text(model, tokenizer, [c for _, caps in splits[s] for c in caps], work / f"text_{s}") for s in splits}
    seconds["text_features"] = time.perf_counter() - t

    # Validation: the last 10% of train clips (seen compositions) for curves; test is only for the card.
    n_val = max(4, len(splits["train"]) // 10)
    train_idx = np.arange(len(splits["train"]) - n_val)
    val_idx = np.arange(len(splits["train"]) - n_val, len(splits["train"]))

    def text_rows(vectors, idx):
        return vectors[(idx[:, None] * CAPTIONS_PER_CLIP + np.arange(CAPTIONS_PER_CLIP)).reshape(-1)]

    train_states, val_states = states["train"].subset(train_idx, last), states["train"].subset(val_idx, last)
    train_text, val_text = text_rows(texts["train"], train_idx), text_rows(texts["train"], val_idx)

    untrained = {policy: evaluate(model, states[key], texts["test"]) for policy, key in (("trim", "test"), ("pad", "test_pad"))}
    curves, results_by_mode, heads_by_mode = {}, {}, {}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        t = time.perf_counter()
        model.load_state_dict(initial_state)
        mode_recipe = Recipe(**{**asdict(recipe), "mode": mode})
        curves[mode] = train(model, mode_recipe, train_states, train_text, val_states, val_text)
        heads_by_mode[mode] = save_heads(model, mode, mode_recipe, work / f"heads_{mode}.safetensors")
        seconds[f"train_{mode}"] = time.perf_counter() - t
        # Evaluate what ships: the fp16-rounded heads loaded back into the frozen backbones.
        from wavlink_edge.export.backbones import load_heads

        model.load_state_dict(initial_state)
        load_heads(model, heads_by_mode[mode])
        results_by_mode[mode] = {"trim": evaluate(model, states["test"], texts["test"]),
                                 "pad": evaluate(model, states["test_pad"], texts["test"])}

    def r1(res):
        top = res[str(model.config.embed_dim)]
        return top["t2a"]["R@1"] + top["a2t"]["R@1"]

    shipped = max(results_by_mode, key=lambda m: r1(results_by_mode[m]["trim"]))
    seconds["total"] = time.perf_counter() - t0
    results = {
        "shipped_mode": shipped, "recipe": asdict(Recipe(**{**asdict(recipe), "mode": shipped})),
        "dims": list(model.config.matryoshka_dims),
        "counts": {"train": len(splits["train"]), "val": n_val, "test": len(splits["test"])},
        "untrained": untrained, "trained": results_by_mode, "chance": chance(len(splits["test"])),
        "curves": curves, "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "corpus_reused": bool(args.corpus), "load_average": [round(load_start, 1), round(os.getloadavg()[0], 1)],
    }
    results["tables"] = [(f"trained ({m})", p, results_by_mode[m][p]) for m in results_by_mode for p in ("trim", "pad")]
    results["tables"] += [("untrained", p, untrained[p]) for p in ("trim", "pad")]
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: results[k] for k in ("shipped_mode", "counts", "seconds")}, indent=2))
    if args.tiny:
        return 0
    return _write_outputs(results, Path(args.out), heads_by_mode[shipped])


def _write_outputs(results: dict, out: Path, heads: Path | None) -> int:
    """Heads file (when given), curves, model card and results JSON into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    if heads is not None:
        (out / DEMO_HEADS.name).write_bytes(heads.read_bytes())
    results["heads_bytes"] = (out / DEMO_HEADS.name).stat().st_size
    plot_curves(results["curves"], out / "training_curves.png")
    model_card(results, out / "MODEL_CARD.md")
    (out / "training_results.json").write_text(json.dumps({k: v for k, v in results.items() if k != "tables"}, indent=2))
    print(f"wrote {out / DEMO_HEADS.name} (mode {results['shipped_mode']}) and {out / 'MODEL_CARD.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
