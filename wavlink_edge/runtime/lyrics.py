"""WEALY lyrics embeddings (arXiv 2510.08176), torch-free: what is sung or said, not how it sounds.

audio -> 16 kHz -> 30 s windows (first `max_chunks`, 5 min) -> Whisper encoder + every decoder layer's
cross-attention keys/values (`lyrics_encoder.onnx`, once per window) -> greedy decoding, multilingual
(the language token is the decoder's own argmax after <|startoftranscript|>), with a self-attention KV
cache (`lyrics_decoder.onnx`, one token per step) -> the final decoder layer's state of every generated
step, concatenated over windows -> `lyrics_head.onnx` (projection, 4 transformer blocks, GeM, linear) ->
L2-normalised embedding.

Whisper decodes silence, or a clip too short to hold a word, as "you" / "Thank you." with full
confidence; an embedding of that says nothing of the item. So a window whose RMS is below
``SILENCE_DBFS`` (an energy floor: digital silence and near-silence) is not decoded, and an item is
an error (its row says so, and the command prints the line) when it holds under ``MIN_SECONDS`` of
audio ("too short"), only silent windows, or -- where the export's tokenizer has Whisper's no-speech
token -- only windows whose no-speech probability exceeds ``NO_SPEECH_THRESHOLD`` ("no speech": a
chime, a ring, a tone). ``LyricsResult.no_speech_prob`` is the lowest over an item's windows. An item that keeps some windows reports how
many it skipped (``LyricsResult.silent_windows``, and a warning line).

The greedy rules are CTranslate2's (what faster-whisper runs) with beam_size=1: the model's suppress
list at every step, blank and end-of-text suppressed at the first step.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wavlink_edge.runtime.audio import AudioInput, describe_source, iter_audio_blocks
from wavlink_edge.runtime.errors import AudioInputError, ModelFilesError, UsageError
from wavlink_edge.runtime.features import HOP_LENGTH, SAMPLE_RATE, clip_features, iter_windows
from wavlink_edge.runtime.manifest import Manifest, artifacts_digest
from wavlink_edge.runtime.model import as_items
from wavlink_edge.runtime.session import CPU_EP, ProviderSpec, choose_providers, open_session, trt_cache_dir
from wavlink_edge.runtime.vectors import normalize, similarity

log = logging.getLogger("wavlink_edge.runtime")

CONFIG_FILE = "lyrics.json"
# Under this RMS level a window is silence (digital silence is -inf; a quiet room recording sits near -50).
SILENCE_DBFS = -60.0
# Whisper needs a word's worth of audio; below this the decoder's text is its prior ("you"), not the clip.
MIN_SECONDS = 0.5
# Whisper's own no-speech threshold (openai-whisper's transcribe default). On the bundled samples with the
# real Whisper-base decoder: speech 0.026; chime 0.73, phone ring 0.63, a 440 Hz tone 0.80, noise 0.85
# (python -c in docs/wealy.md). An item is "no speech" only when every window is above it, so a song
# with an instrumental passage keeps all its windows and its embedding.
NO_SPEECH_THRESHOLD = 0.6
NO_SPEECH_TOKENS = ("<|nocaptions|>", "<|nospeech|>")  # Whisper's name for it before and after large-v3
TOWERS = ("lyrics_encoder", "lyrics_decoder", "lyrics_head")
# Step = (tokens [1, n], past k, past v, cross k, cross v) -> (states [1, n, d], logits [1, V], k, v)
Step = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class WhisperVocab:
    """Whisper's special token ids and suppression lists (from the CTranslate2 config and tokenizer)."""

    sot: int
    eot: int
    transcribe: int
    no_timestamps: int
    lang_ids: tuple[int, ...]
    suppress: tuple[int, ...]
    suppress_begin: tuple[int, ...]

    @classmethod
    def from_dict(cls, d: dict) -> WhisperVocab:
        return cls(**{k: tuple(d[k]) if isinstance(d[k], list) else int(d[k]) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Decoded:
    """One window's greedy decoding: the language, the generated tokens (end-of-text excluded) and the
    final-layer state of every step that generated a token, end-of-text included ([len(tokens) + 1, d])."""

    language: int
    tokens: list[int]
    states: np.ndarray
    no_speech_prob: float | None = None  # softmax at the first step of the no-speech token, when asked for


def greedy_decode(step: Step, cross_k: np.ndarray, cross_v: np.ndarray, vocab: WhisperVocab,
                  past_k: np.ndarray, past_v: np.ndarray, max_new_tokens: int = 224,
                  no_speech_id: int | None = None) -> Decoded:
    """Greedy decoding of one window; `past_k`/`past_v` are the empty caches ([L, 1, h, d_head, 0] and
    [L, 1, h, 0, d_head]). The step that predicts end-of-text contributes its state, so silence still
    yields one state. ``no_speech_id``: Whisper's <|nocaptions|> token, whose probability after
    <|startoftranscript|> is its no-speech probability (as openai-whisper and faster-whisper read it)."""
    _, logits, past_k, past_v = step(np.array([[vocab.sot]], np.int64), past_k, past_v, cross_k, cross_v)
    no_speech_prob = None
    if no_speech_id is not None:
        first = logits[0].astype(np.float64)
        no_speech_prob = float(np.exp(first[no_speech_id] - first.max()) / np.exp(first - first.max()).sum())
    lang_ids = np.asarray(vocab.lang_ids)
    language = int(lang_ids[np.argmax(logits[0, lang_ids])])
    prompt = np.array([[language, vocab.transcribe, vocab.no_timestamps]], np.int64)
    states, logits, past_k, past_v = step(prompt, past_k, past_v, cross_k, cross_v)
    suppress, suppress_begin = list(vocab.suppress), list(vocab.suppress_begin)
    tokens, collected = [], [states[0, -1]]
    for i in range(max_new_tokens):
        scores = logits[0].astype(np.float32, copy=True)
        scores[suppress] = -np.inf
        if i == 0:
            scores[suppress_begin] = -np.inf
        token = int(np.argmax(scores))
        if token == vocab.eot:
            break
        tokens.append(token)
        if i + 1 == max_new_tokens:
            break
        states, logits, past_k, past_v = step(np.array([[token]], np.int64), past_k, past_v, cross_k, cross_v)
        collected.append(states[0, -1])
    return Decoded(language, tokens, np.stack(collected).astype(np.float32), no_speech_prob)


@dataclass(frozen=True)
class LyricsResult:
    index: int
    source: str
    embedding: np.ndarray | None
    error: str | None = None
    windows: int = 0
    text: str | None = None
    languages: tuple[str, ...] = ()
    silent_windows: int = 0  # windows below SILENCE_DBFS, not decoded
    no_speech_prob: float | None = None  # the lowest over the decoded windows (None: the export has no such token)

    @property
    def ok(self) -> bool:
        return self.error is None


class OrtStep:
    """The decoder session as a `Step`."""

    def __init__(self, session):
        self.session = session

    def __call__(self, tokens, past_k, past_v, cross_k, cross_v):
        return tuple(self.session.run_all({"tokens": tokens, "past_k": past_k, "past_v": past_v,
                                           "cross_k": cross_k, "cross_v": cross_v}))


class Lyrics:
    """WEALY lyrics embeddings from an export written with `export/to_onnx.py --lyrics`."""

    def __init__(self, manifest: Manifest, sessions: dict, config: dict, tokenizer=None):
        self.manifest = manifest
        self.config = config
        self.vocab = WhisperVocab.from_dict(config["vocab"])
        self.encoder, self.head = sessions["lyrics_encoder"], sessions["lyrics_head"]
        self.step: Step = OrtStep(sessions["lyrics_decoder"])
        self.tokenizer = tokenizer
        self.dim = int(config["embed_dim"])
        self.max_chunks = int(config["max_chunks"])
        self.max_new_tokens = int(config["max_new_tokens"])
        layers, heads, d_model = (int(config["decoder"][k]) for k in ("n_layers", "n_heads", "d_model"))
        self.empty_cache = (np.zeros((layers, 1, heads, d_model // heads, 0), np.float32),
                       np.zeros((layers, 1, heads, 0, d_model // heads), np.float32))
        self.n_mels, self.max_frames = manifest.model.n_mels, manifest.model.max_frames  # 3000: Whisper's 30 s
        self.heads = config.get("heads", "untrained")
        self.no_speech_id = next((tokenizer.token_to_id(t) for t in NO_SPEECH_TOKENS
                                  if tokenizer is not None and tokenizer.token_to_id(t) is not None), None)
        self.digest = artifacts_digest([manifest.find_artifact(tower, "fp32") for tower in TOWERS],
                                       f"{CONFIG_FILE}:{manifest.files[CONFIG_FILE]['sha256']}")

    @classmethod
    def from_pretrained(cls, export_dir: str | Path, providers: Sequence[ProviderSpec] | None = None,
                        threads: int | None = None) -> Lyrics:
        """Open the lyrics artifacts of an export (fp32), each size- and sha256-checked first."""
        manifest = Manifest.load(export_dir)
        if CONFIG_FILE not in manifest.files:
            raise ModelFilesError(f"{manifest.export_dir} has no lyrics model: write one with "
                                  "`python export/to_onnx.py --size base --lyrics`")
        config = json.loads(manifest.read_verified(CONFIG_FILE).decode("utf-8"))
        chosen = choose_providers(providers, "fp32", trt_cache_dir(manifest.export_dir))
        chosen = [p for p in chosen if p != "TensorrtExecutionProvider"] or [CPU_EP]  # dynamic KV shapes
        sessions = {tower: open_session("onnxruntime", manifest, manifest.find_artifact(tower, "fp32"), chosen, threads)
                    for tower in TOWERS}
        tokenizer = None
        if "whisper_tokenizer.json" in manifest.files:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_str(manifest.read_verified("whisper_tokenizer.json").decode("utf-8"))
        if config.get("heads") != "trained":
            log.warning("%s: the lyrics head is untrained: embeddings are not meaningful for matching",
                        manifest.model.name)
        return cls(manifest, sessions, config, tokenizer)

    # -- decoding ----------------------------------------------------------------------------------

    def windows(self, item: AudioInput, source: str) -> Iterator[np.ndarray]:
        """Padded log-mel windows [1, n_mels, max_frames] (30 s for Whisper) of the first `max_chunks`."""
        for samples in self._window_samples(item, source):
            yield self._features(samples)

    def _window_samples(self, item: AudioInput, source: str) -> Iterator[np.ndarray]:
        blocks = iter_audio_blocks(item, source)
        window = self.max_frames * HOP_LENGTH
        for n, samples in enumerate(iter_windows(blocks, window, window)):
            if n == self.max_chunks:
                break
            yield samples

    def _features(self, samples: np.ndarray) -> np.ndarray:
        return clip_features(samples, self.n_mels, "pad")[None, :, : self.max_frames]

    def decode_window(self, features: np.ndarray) -> Decoded:
        cross_k, cross_v = self.encoder.run_all({"input_features": np.ascontiguousarray(features, np.float32)})
        return greedy_decode(self.step, cross_k, cross_v, self.vocab, *self.empty_cache, self.max_new_tokens,
                             self.no_speech_id)

    def decode(self, item: AudioInput, source: str | None = None) -> list[Decoded]:
        """Every window decoded, as it is (silence and non-speech included: what training caches read);
        ``iter_embed_lyrics`` is the checked path."""
        source = source or describe_source(item, 0)
        decoded = [self.decode_window(self._features(samples)) for samples in self._window_samples(item, source)]
        if not decoded:
            raise AudioInputError(f"{source}: no audio left after resampling to {SAMPLE_RATE} Hz (too short)")
        return decoded

    def _decode_speech(self, item: AudioInput, source: str) -> tuple[list[Decoded], int]:
        """The non-silent windows decoded, and how many were silent; raises AudioInputError for a clip too
        short, or with no speech (every window silent, or above the no-speech threshold)."""
        decoded, silent, samples_seen = [], 0, 0
        for samples in self._window_samples(item, source):
            samples_seen += samples.size
            if rms_dbfs(samples) < SILENCE_DBFS:
                silent += 1
                continue
            decoded.append(self.decode_window(self._features(samples)))
        if samples_seen == 0:
            raise AudioInputError(f"{source}: no audio left after resampling to {SAMPLE_RATE} Hz (too short)")
        if samples_seen < MIN_SECONDS * SAMPLE_RATE:
            raise AudioInputError(f"{source}: too short for lyrics: {samples_seen / SAMPLE_RATE:.3f} s of audio "
                                  f"(at least {MIN_SECONDS:g} s; Whisper decodes less as \"you\")")
        if not decoded:
            raise AudioInputError(f"{source}: no speech: every window ({silent}) is silent (RMS below "
                                  f"{SILENCE_DBFS:g} dBFS); nothing to transcribe")
        lowest = _lowest_no_speech(decoded)
        if lowest is not None and lowest > NO_SPEECH_THRESHOLD:
            raise AudioInputError(f"{source}: no speech: Whisper's no-speech probability is {lowest:.2f} or more in "
                                  f"every window (threshold {NO_SPEECH_THRESHOLD}); its transcript would be a guess "
                                  f"({self.text(decoded)!r})")
        return decoded, silent

    def text(self, decoded: Sequence[Decoded]) -> str:
        if self.tokenizer is None:
            return ""
        return " ".join(self.tokenizer.decode(d.tokens).strip() for d in decoded).strip()

    def embed_states(self, states: np.ndarray) -> np.ndarray:
        """Decoder states [m, d] -> normalised embedding [dim]."""
        return normalize(self.head.run({"states": np.ascontiguousarray(states[None], np.float32)}))[0]

    # -- public API --------------------------------------------------------------------------------

    def iter_embed_lyrics(self, inputs: Iterable[AudioInput]) -> Iterator[LyricsResult]:
        """One result per input, in order; a bad item yields its error and the rest go on."""
        for index, item in enumerate(as_items(inputs)):
            source = describe_source(item, index)
            try:
                decoded, silent = self._decode_speech(item, source)
            except AudioInputError as exc:
                yield LyricsResult(index, source, None, str(exc))
                continue
            except (ValueError, TypeError, OSError, MemoryError) as exc:
                yield LyricsResult(index, source, None, f"{source}: cannot decode audio ({type(exc).__name__}: {exc})")
                continue
            states = np.concatenate([d.states for d in decoded])
            languages = tuple(self.language_code(d.language) for d in decoded)
            if silent:
                log.warning("%s: %d of %d windows are silent (RMS below %g dBFS): not decoded, the rest embedded",
                            source, silent, silent + len(decoded), SILENCE_DBFS)
            yield LyricsResult(index, source, self.embed_states(states), None, len(decoded), self.text(decoded),
                               languages, silent, _lowest_no_speech(decoded))

    def embed_lyrics(self, inputs: Iterable[AudioInput]) -> np.ndarray:
        """float32 [N, dim]; raises on the first bad item, naming it."""
        rows = []
        for result in self.iter_embed_lyrics(inputs):
            if not result.ok:
                raise AudioInputError(result.error)
            rows.append(result.embedding)
        return np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)

    def language_code(self, token: int) -> str:
        if self.tokenizer is None:
            return str(token)
        return (self.tokenizer.id_to_token(token) or str(token)).strip("<|>")


def _lowest_no_speech(decoded: Sequence[Decoded]) -> float | None:
    probs = [d.no_speech_prob for d in decoded if d.no_speech_prob is not None]
    return min(probs) if probs else None


def rms_dbfs(samples: np.ndarray) -> float:
    """The RMS level of float samples in dB relative to full scale (-inf for digital silence)."""
    power = float(np.mean(np.square(samples, dtype=np.float64))) if samples.size else 0.0
    return 10.0 * np.log10(power) if power > 0 else float("-inf")


def fused_similarity(lyrics_a: np.ndarray, lyrics_b: np.ndarray, audio_a: np.ndarray, audio_b: np.ndarray,
                     lyrics_weight: float = 0.5) -> np.ndarray:
    """Late fusion (WEALY + an acoustic embedding, as the paper's CLEWS + WEALY): a weighted sum of the
    two cosine similarity matrices [Na, Nb]."""
    if not 0.0 <= lyrics_weight <= 1.0:
        raise UsageError(f"lyrics_weight must be in [0, 1], got {lyrics_weight!r}")
    return lyrics_weight * similarity(lyrics_a, lyrics_b) + (1.0 - lyrics_weight) * similarity(audio_a, audio_b)

