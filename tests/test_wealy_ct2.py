"""The PyTorch Whisper-base decoder (from the CTranslate2 file) against CTranslate2 itself on real speech.

CTranslate2's Whisper API does not expose decoder states, but it returns every step's raw logits, which
are the final states times the (full-rank) embedding table: the states are recovered from them by least
squares and compared, besides the greedy tokens and the logits themselves."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

torch = pytest.importorskip("torch")
ctranslate2 = pytest.importorskip("ctranslate2")

from wavlink_edge.export.backbones import MissingWeightsError, ct2_whisper_base_dir  # noqa: E402
from wavlink_edge.export.wealy import base_reference  # noqa: E402
from wavlink_edge.runtime.audio import decode_audio  # noqa: E402
from wavlink_edge.runtime.features import log_mel_spectrogram  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent / "wavlink_edge"
CLIPS = [ROOT / "runtime/samples/speech_en_female.flac", ROOT / "quantization/calibration/speech_10_ru.ogg"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    try:
        ref = base_reference()
        ct2_dir = ct2_whisper_base_dir(tmp_path_factory.mktemp("ct2"))
    except MissingWeightsError as exc:
        pytest.skip(str(exc))
    return ref, ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32", intra_threads=2)


@pytest.mark.parametrize("clip", CLIPS, ids=lambda p: p.name)
def test_greedy_tokens_logits_and_states_equal_ctranslate2(models, clip):
    ref, ct2 = models
    mel = log_mel_spectrogram(decode_audio(clip))[None].astype(np.float32)
    ours = ref.decode_features(mel)
    features = ctranslate2.StorageView.from_array(mel)
    language = ct2.detect_language(features)[0][0][0]
    assert Tokenizer.from_file(str(ref.tokenizer_json)).token_to_id(language) == ours.language
    result = ct2.generate(features, [["<|startoftranscript|>", language, "<|transcribe|>", "<|notimestamps|>"]],
                          beam_size=1, return_logits_vocab=True)[0]
    assert result.sequences_ids[0] == ours.tokens and ours.tokens
    logits = np.stack([np.asarray(row) for row in result.logits[0]]).astype(np.float64)
    assert logits.shape[0] == len(ours.states)  # one row per generated step, end-of-text included
    table = ref.decoder.embed_tokens.weight.detach().numpy().astype(np.float64)
    kept = (logits > -1e30).all(0)  # CTranslate2 writes the suppressed tokens as float's lowest value
    mine = ours.states.astype(np.float64) @ table.T
    assert np.abs(mine[:, kept] - logits[:, kept]).max() < 2e-3
    kept_table = table[kept]  # least squares through the normal equations: a 512 x 512 solve
    recovered = np.linalg.solve(kept_table.T @ kept_table, kept_table.T @ logits[:, kept].T).T
    cos = (recovered * ours.states).sum(1) / np.linalg.norm(recovered, axis=1) / np.linalg.norm(ours.states, axis=1)
    assert cos.min() >= 0.9999
