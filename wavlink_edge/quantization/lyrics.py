"""fp16 and INT8 artifacts of the WEALY lyrics model (encoder + cross K/V, decoder step, head), gated on
what the user gets.

    fp16  every float tensor fp16, inputs, outputs and the self-attention cache included (the artifact's
          precision end to end: a GPU keeps the cache in fp16); LayerNorm, Softmax and Pow (GeM) stay fp32
    int8  every weight MatMul as ORT MatMulNBits: 8-bit symmetric weights in blocks of INT8_BLOCK along the
          input dimension, accuracy_level 4 (activations quantized at run time per row and block:
          batch-independent; int8 dot products on VNNI / AMX). The decoder's output projection (the
          51865 x 512 token table, read in full at every step) is one of them; the token embedding Gather
          keeps the fp32 table. Attention products, LayerNorm and Softmax stay fp32, as do the caches and
          cross K/V. Measured and not shipped (docs/wealy.md): the audio tower's per-token recipe for the
          encoder (fused attention + per-token int8 GEMMs; 7- or 8-bit weights, with or without
          SmoothQuant, fc1/fc2, attention projections or first/last layer kept fp32) ran an encoder
          window ~2x faster but changed 9-20 greedy tokens on the Swedish and Japanese clips (embedding cosine
          0.93-0.98) although its states kept cosine 0.999: greedy decoding turns small encoder errors
          into different words at near-ties. Fusing the attention before MatMulNBits flipped the same two
          clips (11 and 10 tokens).

Gates (`lyrics_fidelity`, on real speech clips that no step of the export or of the quantization fits on):
the candidate's greedy tokens against fp32's (edit distance per window at most TOKEN_TOLERANCE of the fp32
token count, same language), the final decoder states teacher-forced on fp32's tokens (cosine mean >=
STATE_GATE[0], min >= STATE_GATE[1]) and the head embedding of the candidate's own decoding against fp32's
(cosine mean >= EMBEDDING_GATE[0], min >= EMBEDDING_GATE[1]).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import onnx

from wavlink_edge.runtime.audio import decode_audio
from wavlink_edge.runtime.features import HOP_LENGTH, clip_features
from wavlink_edge.runtime.lyrics import CONFIG_FILE, TOWERS, OrtDecoder, WhisperVocab
from wavlink_edge.runtime.manifest import Manifest, sha256_file
from wavlink_edge.runtime.session import OnnxSession
from wavlink_edge.runtime.vectors import normalize

PRECISIONS = ("fp16", "int8")
FP16_OP_BLOCK_LIST = ["LayerNormalization", "Softmax", "ReduceL2", "Pow"]
INT8_BLOCK = 32
TOKEN_TOLERANCE = 0.10  # differing greedy tokens per window (edit distance / fp32 tokens), rounded up
STATE_GATE = (0.99, 0.95)
EMBEDDING_GATE = (0.995, 0.98)
_REPO = Path(__file__).resolve().parent.parent
# Real speech in eight languages plus speech over music; none is among the fp32 export's validation clips
# (`export/wealy.py:validation_clips`) and nothing here is fitted on them (weight-only recipes).
HELDOUT_CLIPS = tuple(_REPO / "quantization" / "calibration" / name for name in (
    "speech_01_en-gb.ogg", "speech_05_sv.ogg", "speech_06_pl.ogg", "speech_07_cs.ogg", "speech_09_tr.ogg",
    "speech_10_ru.ogg", "speech_11_hi.ogg", "speech_12_ja.ogg", "mix_speech_music_00.ogg"))
FAST_CLIPS = 3  # --fast (CI)


class LyricsQuantizationError(RuntimeError):
    pass


def make_fp16(src: Path, dst: Path) -> dict:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(str(src), keep_io_types=False, op_block_list=FP16_OP_BLOCK_LIST)
    onnx.save(model, str(dst))
    return {"method": "onnxruntime.transformers.float16.convert_float_to_float16", "keep_io_types": False,
            "io": "fp16 (features, caches, cross K/V, states, logits, embedding)", "kept_fp32_ops": FP16_OP_BLOCK_LIST}


def make_int8(src: Path, dst: Path) -> dict:
    """Every weight MatMul as 8-bit MatMulNBits with int8 compute."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    model = onnx.load(str(src))
    config = DefaultWeightOnlyQuantConfig(block_size=INT8_BLOCK, is_symmetric=True, accuracy_level=4, bits=8)
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), False)
    n = sum(node.op_type == "MatMulNBits" for node in onnx.load(str(dst), load_external_data=False).graph.node)
    return {"method": "onnxruntime MatMulNBitsQuantizer (com.microsoft.MatMulNBits)", "int8_matmuls": n,
            "weights": f"int8 symmetric, one scale per output channel and block of {INT8_BLOCK} inputs",
            "activations": "int8 at run time per row and block (accuracy_level 4): batch-independent",
            "not_quantized": "attention act x act, LayerNorm, Softmax, Conv front end, token embedding Gather; "
                             "caches and cross K/V fp32"}


def artifact_name(tower: str, precision: str) -> str:
    return f"{tower}_{precision}.onnx"


def heldout_features(manifest: Manifest, paths=HELDOUT_CLIPS) -> tuple[list[str], np.ndarray]:
    """The first window of each clip, as the runtime cuts it: [N, n_mels, max_frames] log-mel."""
    paths = [Path(p) for p in paths if Path(p).is_file()]
    if not paths:
        raise LyricsQuantizationError("no held-out speech clip found for the lyrics gates")
    frames, n_mels = manifest.model.max_frames, manifest.model.n_mels
    windows = [clip_features(decode_audio(p)[: frames * HOP_LENGTH], n_mels, "pad")[:, :frames] for p in paths]
    return [p.name for p in paths], np.stack(windows).astype(np.float32)


def edit_distance(a: list[int], b: list[int]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)


class _Towers:
    """The three lyrics sessions of one precision."""

    def __init__(self, paths: dict[str, Path], vocab: WhisperVocab, threads: int | None = None):
        self.sessions = {tower: OnnxSession(Path(paths[tower]).read_bytes(), name=Path(paths[tower]).name,
                                            threads=threads) for tower in TOWERS}
        self.decoder = OrtDecoder(self.sessions["lyrics_encoder"], self.sessions["lyrics_decoder"], vocab)
        self.head_type = np.float16 if self.sessions["lyrics_head"]._session.get_inputs()[0].type == "tensor(float16)" \
            else np.float32

    def embed(self, states: np.ndarray) -> np.ndarray:
        out = self.sessions["lyrics_head"].run({"states": states[None].astype(self.head_type)})
        return normalize(out.astype(np.float32))[0]

    def teacher_forced(self, features: np.ndarray, sequences: list[list[int]], eot: int) -> np.ndarray:
        """Final states [B, T, d] of every position for the given token sequences in one call (rows padded
        at the end with end-of-text: the causal mask keeps padding out of the real positions)."""
        width = max(len(s) for s in sequences)
        tokens = np.array([s + [eot] * (width - len(s)) for s in sequences], np.int64)
        cross_k, cross_v = self.decoder.cross(features)
        states = self.decoder.step(tokens, *self.decoder.empty_cache(len(sequences)), cross_k, cross_v)[0]
        return states.astype(np.float32)


def lyrics_fidelity(reference: _Towers, candidate: _Towers, names: list[str], features: np.ndarray,
                    vocab: WhisperVocab, max_new_tokens: int) -> dict:
    want = reference.decoder.decode(features, max_new_tokens)
    got = candidate.decoder.decode(features, max_new_tokens)
    prompts = [[vocab.sot, d.language, vocab.transcribe, vocab.no_timestamps] + d.tokens for d in want]
    forced = candidate.teacher_forced(features, prompts, vocab.eot)
    clips, state_cos, embed_cos, tokens_ok = [], [], [], True
    for i, (name, w, g) in enumerate(zip(names, want, got)):
        cos = _cosines(forced[i, 3 : 3 + len(w.states)], w.states)
        emb = float(_cosines(candidate.embed(g.states), reference.embed(w.states)))
        diff = edit_distance(w.tokens, g.tokens)
        allowed = math.ceil(TOKEN_TOLERANCE * len(w.tokens))
        ok = diff <= allowed and g.language == w.language
        tokens_ok &= ok
        state_cos.append(cos)
        embed_cos.append(emb)
        clips.append({"clip": name, "fp32_tokens": len(w.tokens), "differing_tokens": diff, "allowed": allowed,
                      "same_language": g.language == w.language, "state_cosine_min": round(float(cos.min()), 6),
                      "embedding_cosine": round(emb, 6)})
    states = np.concatenate(state_cos)
    fig = {"reference": "fp32 lyrics graphs", "clips": clips,
           "tokens_identical_windows": sum(c["differing_tokens"] == 0 for c in clips),
           "differing_tokens_total": sum(c["differing_tokens"] for c in clips),
           "fp32_tokens_total": sum(c["fp32_tokens"] for c in clips),
           "state_cosine_mean": float(states.mean()), "state_cosine_min": float(states.min()),
           "embedding_cosine_mean": float(np.mean(embed_cos)), "embedding_cosine_min": float(np.min(embed_cos)),
           "gates": {"tokens": f"edit distance <= ceil({TOKEN_TOLERANCE} x fp32 tokens) per window, same language",
                     "state_cosine": list(STATE_GATE), "embedding_cosine": list(EMBEDDING_GATE)}}
    fig["passed"] = bool(tokens_ok and fig["state_cosine_mean"] >= STATE_GATE[0] and fig["state_cosine_min"] >= STATE_GATE[1]
                         and fig["embedding_cosine_mean"] >= EMBEDDING_GATE[0]
                         and fig["embedding_cosine_min"] >= EMBEDDING_GATE[1])
    return fig


def quantize_lyrics(export_dir, precisions, force: bool = False, log=print, fast: bool = False,
                    clips=HELDOUT_CLIPS, threads: int | None = None) -> dict:
    """Write fp16 / int8 lyrics artifacts next to the fp32 ones, each gated and recorded in the manifest.
    Returns the new manifest entries; raises LyricsQuantizationError naming the refused ones (the others
    are written). An export without lyrics is left alone (empty result)."""
    export_dir = Path(export_dir)
    manifest = Manifest.load(export_dir)
    if CONFIG_FILE not in manifest.files:
        return {}
    import json

    config = json.loads(manifest.read_verified(CONFIG_FILE).decode("utf-8"))
    vocab = WhisperVocab.from_dict(config["vocab"])
    max_new_tokens = int(config["max_new_tokens"])
    sources = {tower: manifest.path(manifest.find_artifact(tower, "fp32").file) for tower in TOWERS}
    for path in sources.values():
        manifest.read_verified(path.name)  # size and sha256 before anything is derived from it
    names, features = heldout_features(manifest, list(clips)[:FAST_CLIPS] if fast else clips)
    reference = _Towers(sources, vocab, threads)
    results, refused = {}, []
    for precision in [p for p in precisions if p in PRECISIONS]:
        start = time.perf_counter()
        tmp = {tower: export_dir / f".tmp-{os.getpid()}-{artifact_name(tower, precision)}" for tower in TOWERS}
        try:
            recipes = {tower: make_fp16(sources[tower], tmp[tower]) if precision == "fp16" else
                       make_int8(sources[tower], tmp[tower]) for tower in TOWERS}
            fidelity = lyrics_fidelity(reference, _Towers(tmp, vocab, threads), names, features, vocab, max_new_tokens)
            seconds = round(time.perf_counter() - start, 1)
            summary = (f"tokens identical on {fidelity['tokens_identical_windows']}/{len(names)} windows "
                       f"({fidelity['differing_tokens_total']} of {fidelity['fp32_tokens_total']} differ), state cosine "
                       f"{fidelity['state_cosine_mean']:.5f}/{fidelity['state_cosine_min']:.5f}, embedding cosine "
                       f"{fidelity['embedding_cosine_mean']:.5f}/{fidelity['embedding_cosine_min']:.5f} (mean/min)")
            if not fidelity["passed"] and not force:
                refused.append(precision)
                log(f"  REFUSED lyrics {precision}: {summary}")
                continue
            fidelity["forced"] = not fidelity["passed"]
            manifest = Manifest.load(export_dir)
            for tower in TOWERS:
                name = artifact_name(tower, precision)
                os.replace(tmp[tower], export_dir / name)
                results[name] = manifest.record(name, None, tower=tower, precision=precision,
                                                source={"file": sources[tower].name, "sha256": sha256_file(sources[tower])},
                                                fidelity=fidelity, recipe={**recipes[tower], "seconds": seconds})
            manifest.save()
            log(f"  wrote lyrics {precision} ({sum((export_dir / n).stat().st_size for n in results if precision in n) / 1e6:.0f}"
                f" MB){' FORCED under the gate' if fidelity['forced'] else ''}: {summary}")
        finally:
            for path in tmp.values():
                path.unlink(missing_ok=True)
    if refused:
        raise LyricsQuantizationError(f"lyrics artifacts under their gates, not written: {', '.join(refused)}")
    return results
