"""WEALY lyrics embeddings (arXiv 2510.08176), torch-free: what is sung or said, not how it sounds.

audio -> 16 kHz -> 30 s windows (first `max_chunks`, 5 min) -> Whisper encoder + every decoder layer's
cross-attention keys/values (`lyrics_encoder.onnx`, once per window) -> greedy decoding, multilingual
(the language token is the decoder's own argmax after <|startoftranscript|>), with a self-attention KV
cache (`lyrics_decoder.onnx`, one token per step) -> the final decoder layer's state of every generated
step, concatenated over windows -> `lyrics_head.onnx` (projection, 4 transformer blocks, GeM, linear) ->
L2-normalised embedding.

The greedy rules are CTranslate2's (what faster-whisper runs) with beam_size=1: the model's suppress
list at every step, blank and end-of-text suppressed at the first step.

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
TOWERS = ("lyrics_encoder", "lyrics_decoder", "lyrics_head")
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
# Step = (tokens [B, n], past k, past v, cross k, cross v) -> (states [B, n, d], logits [B, V], present k, v).
# The caches are per-layer sequences (k [B, h, d_head, T], v [B, h, T, d_head]) that the loop only passes
# back: a step may hold them as OrtValues (no copy through numpy) or on a GPU.
Step = Callable[[np.ndarray, Sequence, Sequence, Sequence, Sequence], tuple[np.ndarray, np.ndarray, Sequence, Sequence]]


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


def suppression_masks(vocab: WhisperVocab, n_vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Additive masks (0 or -inf, [n_vocab]) for the first step and for every later one: adding a mask
    and taking the argmax picks the same token as setting the suppressed scores to -inf, without a
    per-step copy and fancy-indexed write of the whole vocabulary."""
    always = np.zeros(n_vocab, np.float32)
    always[list(vocab.suppress)] = -np.inf
    first = always.copy()
    first[list(vocab.suppress_begin)] = -np.inf
    return first, always


def greedy_decode_batch(step: Step, cross_k, cross_v, vocab: WhisperVocab, past_k: np.ndarray, past_v: np.ndarray,
                        max_new_tokens: int = 224, no_speech_id: int | None = None) -> list[Decoded]:
    """Greedy decoding of B windows together (one decoder call per step for all of them: its weights
    are read once per step, not once per window). `past_k`/`past_v` are the empty caches
    ([L, B, h, d_head, 0] and [L, B, h, 0, d_head]); the caches and cross K/V the step returns are passed
    back untouched, so a step may keep them as device-side values. A window that reached end-of-text
    rides along on end-of-text tokens until the last one ends; its results are already final (every row
    of the decoder is computed independently of the others). ``no_speech_id``: Whisper's <|nocaptions|>
    token, whose probability after <|startoftranscript|> is its no-speech probability (as openai-whisper
    and faster-whisper read it)."""
    batch = len(past_k[0])  # per layer [B, h, d_head, 0]
    _, logits, past_k, past_v = step(np.full((batch, 1), vocab.sot, np.int64), past_k, past_v, cross_k, cross_v)
    no_speech = [None] * batch
    if no_speech_id is not None:
        first = logits.astype(np.float64)
        first -= first.max(axis=1, keepdims=True)
        no_speech = list(np.exp(first[:, no_speech_id]) / np.exp(first).sum(axis=1))
    lang_ids = np.asarray(vocab.lang_ids)
    languages = lang_ids[np.argmax(logits[:, lang_ids], axis=1)]
    prompt = np.stack([languages, np.full(batch, vocab.transcribe), np.full(batch, vocab.no_timestamps)], 1)
    states, logits, past_k, past_v = step(prompt.astype(np.int64), past_k, past_v, cross_k, cross_v)
    first, always = suppression_masks(vocab, logits.shape[-1])
    tokens: list[list[int]] = [[] for _ in range(batch)]
    collected = [[states[b, -1]] for b in range(batch)]
    running = np.ones(batch, bool)
    for i in range(max_new_tokens):
        chosen = np.argmax(logits + (first if i == 0 else always), axis=1)
        running &= chosen != vocab.eot
        for b in np.flatnonzero(running):
            tokens[b].append(int(chosen[b]))
        if not running.any() or i + 1 == max_new_tokens:
            break
        feed = np.where(running, chosen, vocab.eot).astype(np.int64)[:, None]
        states, logits, past_k, past_v = step(feed, past_k, past_v, cross_k, cross_v)
        for b in np.flatnonzero(running):
            collected[b].append(states[b, -1])
    return [Decoded(int(languages[b]), tokens[b], np.stack(collected[b]).astype(np.float32),
                    None if no_speech[b] is None else float(no_speech[b])) for b in range(batch)]


def greedy_decode(step: Step, cross_k, cross_v, vocab: WhisperVocab, past_k: np.ndarray, past_v: np.ndarray,
                  max_new_tokens: int = 224, no_speech_id: int | None = None) -> Decoded:
    """Greedy decoding of one window; `past_k`/`past_v` are the empty per-layer caches ([1, h, d_head, 0]
    and [1, h, 0, d_head] each). The step that predicts end-of-text contributes its state, so silence still
    yields one state."""
    return greedy_decode_batch(step, cross_k, cross_v, vocab, past_k, past_v, max_new_tokens, no_speech_id)[0]


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


def _device_of(session) -> str:
    """Where the step keeps its caches: on the GPU when the session runs there (CUDA), else in host memory."""
    return "cuda" if "CUDAExecutionProvider" in getattr(session, "providers", ()) else "cpu"


def _bind_input(binding, name: str, value) -> None:
    if isinstance(value, np.ndarray):
        binding.bind_cpu_input(name, np.ascontiguousarray(value))
    else:  # an OrtValue a previous call left where it was computed
        binding.bind_ortvalue_input(name, value)


def run_bound(session, feeds: dict, kept: Sequence[str], device: str = "cpu") -> list:
    """One run of an `OnnxSession` with IO binding: the outputs named in `kept` stay OrtValues on
    `device` (no copy into numpy; fed back as they are), the others come back as numpy arrays."""
    ort_session = session._session  # the raw onnxruntime session: IO binding is not part of `Session`
    binding = ort_session.io_binding()
    for name, value in feeds.items():
        _bind_input(binding, name, value)
    names = [o.name for o in ort_session.get_outputs()]
    for name in names:
        binding.bind_output(name, device if name in kept else "cpu")
    ort_session.run_with_iobinding(binding)
    return [value if name in kept else value.numpy() for name, value in zip(names, binding.get_outputs())]


class OrtStep:
    """The decoder session as a `Step` over per-layer caches (lists of past_k_i, past_v_i, cross_k_i,
    cross_v_i). The caches it returns, and the cross K/V `OrtDecoder` gives it, are OrtValues bound from
    one call to the next without a round trip through numpy (on CUDA they never leave the GPU); only the
    states and logits are copied out."""

    def __init__(self, session, n_layers: int):
        self.session, self.n_layers = session, n_layers
        self.device = _device_of(session)
        self._kept = tuple(f"present_{kind}_{i}" for kind in "kv" for i in range(n_layers))

    def __call__(self, tokens, past_k, past_v, cross_k, cross_v):
        feeds = {"tokens": tokens}
        for kind, values in (("past_k", past_k), ("past_v", past_v), ("cross_k", cross_k), ("cross_v", cross_v)):
            feeds.update({f"{kind}_{i}": value for i, value in enumerate(values)})
        out = run_bound(self.session, feeds, self._kept, self.device)
        n = self.n_layers
        return out[0], out[1], out[2 : 2 + n], out[2 + n : 2 + 2 * n]


def _float_type(session, name: str):
    """numpy dtype of a float input (float16 in the fp16 artifacts, whose caches are fp16 too)."""
    kind = next(i.type for i in session._session.get_inputs() if i.name == name)
    return np.float16 if kind == "tensor(float16)" else np.float32


class OrtDecoder:
    """The lyrics encoder and decoder-step sessions: windows -> greedy `Decoded`, several windows at once."""

    def __init__(self, encoder, decoder, vocab: WhisperVocab):
        self.encoder, self.vocab = encoder, vocab
        names = [i.name for i in decoder._session.get_inputs()]
        if "cross_k_0" not in names:
            raise ModelFilesError("the lyrics decoder graph takes stacked caches (an export older than the per-layer "
                                  "layout): re-export with `python export/to_onnx.py --size base --lyrics`")
        self.n_layers = sum(name.startswith("past_k_") for name in names)
        shape = next(i.shape for i in decoder._session.get_inputs() if i.name == "past_k_0")  # [B, h, d_head, T]
        self.heads, self.d_head = int(shape[1]), int(shape[2])
        self.step = OrtStep(decoder, self.n_layers)
        self.feature_type = _float_type(encoder, "input_features")
        self.cache_type = _float_type(decoder, "past_k_0")
        self._cross = [o.name for o in encoder._session.get_outputs()]

    def empty_cache(self, batch: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Empty per-layer self-attention caches for `batch` windows, in the decoder artifact's precision."""
        k = np.zeros((batch, self.heads, self.d_head, 0), self.cache_type)
        v = np.zeros((batch, self.heads, 0, self.d_head), self.cache_type)
        return [k] * self.n_layers, [v] * self.n_layers

    def cross(self, features: np.ndarray) -> tuple[list, list]:
        """Windows [B, n_mels, frames] -> per-layer cross K/V, left where the encoder computed them."""
        feeds = {"input_features": np.ascontiguousarray(features, self.feature_type)}
        out = run_bound(self.encoder, feeds, self._cross, self.step.device)
        return out[: self.n_layers], out[self.n_layers :]

    def decode(self, features: np.ndarray, max_new_tokens: int, no_speech_id: int | None = None) -> list[Decoded]:
        """Windows [B, n_mels, frames] -> one `Decoded` each: encoded in one call, decoded together."""
        return greedy_decode_batch(self.step, *self.cross(features), self.vocab, *self.empty_cache(len(features)),
                                   max_new_tokens, no_speech_id)


class Lyrics:
    """WEALY lyrics embeddings from an export written with `export/to_onnx.py --lyrics`."""

    def __init__(self, manifest: Manifest, sessions: dict, config: dict, tokenizer=None, precision: str = "fp32",
                 batch_windows: int = 4):
        self.manifest = manifest
        self.config = config
        self.vocab = WhisperVocab.from_dict(config["vocab"])
        self.encoder, self.head = sessions["lyrics_encoder"], sessions["lyrics_head"]
        self.precision = precision
        self.decoder = OrtDecoder(self.encoder, sessions["lyrics_decoder"], self.vocab)
        self.step: Step = self.decoder.step
        self._state_type = _float_type(self.head, "states")
        self.tokenizer = tokenizer
        self.dim = int(config["embed_dim"])
        self.max_chunks = int(config["max_chunks"])
        self.max_new_tokens = int(config["max_new_tokens"])
        self.empty_cache = self.decoder.empty_cache(1)  # one window's empty per-layer caches
        # windows of one item decoded together; 4 keeps the cross K/V (37 MB per window fp32) modest
        self.batch_windows = max(1, int(batch_windows))
        self.n_mels, self.max_frames = manifest.model.n_mels, manifest.model.max_frames  # 3000: Whisper's 30 s
        self.heads = config.get("heads", "untrained")
        self.no_speech_id = next((tokenizer.token_to_id(t) for t in NO_SPEECH_TOKENS
                                  if tokenizer is not None and tokenizer.token_to_id(t) is not None), None)
        self.digest = artifacts_digest([manifest.find_artifact(tower, precision) for tower in TOWERS],
                                       f"{CONFIG_FILE}:{manifest.files[CONFIG_FILE]['sha256']}")

    @classmethod
    def from_pretrained(cls, export_dir: str | Path, providers: Sequence[ProviderSpec] | None = None,
                        threads: int | None = None, precision: str = "fp32", batch_windows: int = 4) -> Lyrics:
        """Open the lyrics artifacts of an export, each size- and sha256-checked first. `precision`: fp32,
        or fp16 / int8 when the quantization step wrote them (`quantization/lyrics.py`; fp16 is for GPUs:
        on a CPU it runs, slower than fp32)."""
        manifest = Manifest.load(export_dir)
        if CONFIG_FILE not in manifest.files:
            raise ModelFilesError(f"{manifest.export_dir} has no lyrics model: write one with "
                                  "`python export/to_onnx.py --size base --lyrics`")
        config = json.loads(manifest.read_verified(CONFIG_FILE).decode("utf-8"))
        chosen = choose_providers(providers, precision, trt_cache_dir(manifest.export_dir))
        chosen = [p for p in chosen if p != "TensorrtExecutionProvider"] or [CPU_EP]  # dynamic KV shapes
        sessions = {tower: open_session("onnxruntime", manifest, manifest.find_artifact(tower, precision), chosen,
                                        threads) for tower in TOWERS}
        tokenizer = None
        if "whisper_tokenizer.json" in manifest.files:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_str(manifest.read_verified("whisper_tokenizer.json").decode("utf-8"))
        if config.get("heads") != "trained":
            log.warning("%s: the lyrics head is untrained: embeddings are not meaningful for matching",
                        manifest.model.name)
        return cls(manifest, sessions, config, tokenizer, precision, batch_windows)

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

    def decode_windows(self, features: np.ndarray) -> list[Decoded]:
        """Windows [B, n_mels, frames] -> one `Decoded` each, decoded together."""
        return self.decoder.decode(features, self.max_new_tokens, self.no_speech_id)

    def _decode_batched(self, features: Iterable[np.ndarray]) -> list[Decoded]:
        """Windows [1, n_mels, frames] each, decoded `batch_windows` at a time, in order."""
        decoded, pending = [], []
        for window in features:
            pending.append(window)
            if len(pending) == self.batch_windows:
                decoded += self.decode_windows(np.concatenate(pending))
                pending = []
        if pending:
            decoded += self.decode_windows(np.concatenate(pending))
        return decoded

    def decode_window(self, features: np.ndarray) -> Decoded:
        return self.decode_windows(features[:1])[0]

    def decode(self, item: AudioInput, source: str | None = None) -> list[Decoded]:
        """Every window decoded, as it is (silence and non-speech included: what training caches read);
        ``iter_embed_lyrics`` is the checked path."""
        source = source or describe_source(item, 0)
        decoded = self._decode_batched(self.windows(item, source))
        if not decoded:
            raise AudioInputError(f"{source}: no audio left after resampling to {SAMPLE_RATE} Hz (too short)")
        return decoded

    def _decode_speech(self, item: AudioInput, source: str) -> tuple[list[Decoded], int]:
        """The non-silent windows decoded, and how many were silent; raises AudioInputError for a clip too
        short, or with no speech (every window silent, or above the no-speech threshold)."""
        counts = {"silent": 0, "samples": 0}

        def speech_windows() -> Iterator[np.ndarray]:
            for samples in self._window_samples(item, source):
                counts["samples"] += samples.size
                if rms_dbfs(samples) < SILENCE_DBFS:
                    counts["silent"] += 1
                    continue
                yield self._features(samples)

        decoded = self._decode_batched(speech_windows())
        silent, samples_seen = counts["silent"], counts["samples"]
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
        feed = np.ascontiguousarray(states[None], self._state_type)
        return normalize(self.head.run({"states": feed}).astype(np.float32))[0]

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

