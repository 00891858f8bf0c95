"""WEALY lyrics model: reference decoder (vs transformers and CTranslate2), the greedy loop, GeM, the head,
the exported graphs and the `lyrics` CLI."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from wavlink_edge.export.decoder import DecoderDims, WhisperDecoder, decoder_from_hf  # noqa: E402
from wavlink_edge.export.model import AudioDims, AudioTower  # noqa: E402
from wavlink_edge.export.wealy import (  # noqa: E402
    GeM,
    HeadDims,
    LyricsEncoder,
    LyricsReference,
    WealyHead,
    export_lyrics,
)
from wavlink_edge.runtime import cli  # noqa: E402
from wavlink_edge.runtime.lyrics import Lyrics, WhisperVocab, fused_similarity, greedy_decode  # noqa: E402
from wavlink_edge.runtime.outputs import read_rows  # noqa: E402

TINY_VOCAB = WhisperVocab(sot=60, eot=59, transcribe=61, no_timestamps=62, lang_ids=(55, 56, 57),
                          suppress=(1, 2), suppress_begin=(59, 3))


def _hf_tiny():
    from transformers import WhisperConfig, WhisperModel

    config = WhisperConfig(num_mel_bins=80, d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64,
                           decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=48, max_source_positions=50,
                           vocab_size=100, max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                           decoder_start_token_id=1)
    torch.manual_seed(0)
    return config, WhisperModel(config).eval()


def test_decoder_equals_transformers_in_one_pass_and_step_by_step():
    config, hf = _hf_tiny()
    decoder = decoder_from_hf(config.to_dict(), {k: v.numpy() for k, v in hf.state_dict().items()})
    audio = torch.randn(1, 50, 32)
    tokens = torch.randint(3, 100, (1, 7))
    with torch.no_grad():
        want = hf.decoder(input_ids=tokens, encoder_hidden_states=audio).last_hidden_state
        cross_k, cross_v = decoder.cross_kv(audio)
        full, logits, k, v = decoder(tokens, *decoder.empty_cache(1), cross_k, cross_v)
        torch.testing.assert_close(full, want, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(logits, full[:, -1] @ decoder.embed_tokens.weight.T, atol=1e-5, rtol=1e-4)
        assert k.shape == (2, 1, 4, 8, 7) and v.shape == (2, 1, 4, 7, 8)
        states, _, k, v = decoder(tokens[:, :3], *decoder.empty_cache(1), cross_k, cross_v)  # a prompt, then steps
        for i in range(3, 7):
            step, _, k, v = decoder(tokens[:, i : i + 1], k, v, cross_k, cross_v)
            torch.testing.assert_close(step[:, 0], want[:, i], atol=1e-5, rtol=1e-4)


def test_hf_loader_refuses_missing_weights():
    config, hf = _hf_tiny()
    state = {k: v.numpy() for k, v in hf.state_dict().items() if "decoder.layers.1.fc2" not in k}
    with pytest.raises(KeyError, match="fc2"):
        decoder_from_hf(config.to_dict(), state)


def _scripted_step(rows: list[np.ndarray], d: int = 4):
    """A Step whose i-th call returns logits rows[i]; states carry the call index so they can be traced."""
    calls = []

    def step(tokens, past_k, past_v, cross_k, cross_v):
        i = len(calls)
        calls.append(tokens.tolist())
        n = tokens.shape[1]
        states = np.full((1, n, d), float(i), np.float32)
        grow = lambda a, axis: np.concatenate([a, np.zeros(a.shape[:axis] + (n,) + a.shape[axis + 1 :], a.dtype)], axis)  # noqa: E731
        return states, rows[i][None], [grow(k, 3) for k in past_k], [grow(v, 2) for v in past_v]

    return step, calls


def _logits(best: list[int], vocab: int = 64) -> np.ndarray:
    """Logits ranking `best` first, second, ..."""
    row = np.zeros(vocab, np.float32)
    for rank, token in enumerate(best):
        row[token] = 10.0 - rank
    return row


def test_greedy_picks_language_applies_suppression_and_collects_one_state_per_step():
    rows = [_logits([5, 56, 55]),        # after <|sot|>: 5 is not a language; the best language is 56
            _logits([59, 3, 1, 7]),      # first step: eot and 3 suppressed at the beginning, 1 always -> 7
            _logits([2, 9]),             # 2 is suppressed -> 9
            _logits([59, 9])]            # end of text
    step, calls = _scripted_step(rows)
    empty_k, empty_v = [np.zeros((1, 1, 4, 0), np.float32)], [np.zeros((1, 1, 0, 4), np.float32)]
    out = greedy_decode(step, None, None, TINY_VOCAB, empty_k, empty_v)
    assert out.language == 56
    assert calls[:2] == [[[60]], [[56, 61, 62]]]
    assert out.tokens == [7, 9]
    assert out.states.shape == (3, 4) and out.states[:, 0].tolist() == [1.0, 2.0, 3.0]  # incl. the step predicting eot


def test_greedy_stops_at_max_new_tokens():
    step, _ = _scripted_step([_logits([55])] + [_logits([7])] * 10)
    out = greedy_decode(step, None, None, TINY_VOCAB, [np.zeros((1, 1, 4, 0), np.float32)],
                        [np.zeros((1, 1, 0, 4), np.float32)], max_new_tokens=4)
    assert out.tokens == [7] * 4 and len(out.states) == 4


def test_gem_is_mean_at_p1_tends_to_max_and_ignores_masked_tokens():
    x = torch.rand(2, 5, 3) + 0.1
    gem = GeM(p=1.0)
    torch.testing.assert_close(gem(x), x.mean(1))
    gem.p.data.fill_(60.0)
    assert torch.allclose(gem(x), x.max(1).values, rtol=0.05)
    gem.p.data.fill_(3.0)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    torch.testing.assert_close(gem(x, mask)[1], gem(x[1:, :2])[0])
    assert gem(x).sum().requires_grad is True  # p is learnable


def test_head_padding_mask_equals_unpadded():
    torch.manual_seed(1)
    head = WealyHead(HeadDims(d_in=16, d_model=16, n_heads=2, n_layers=4, ffn_dim=32, embed_dim=12)).eval()
    a, b = torch.randn(1, 6, 16), torch.randn(1, 3, 16)
    padded = torch.cat([a, torch.cat([b, torch.randn(1, 3, 16)], 1)])
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    with torch.no_grad():
        both = head(padded, mask)
        torch.testing.assert_close(both[1], head(b)[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(torch.linalg.norm(both, dim=-1), torch.ones(2))


def test_fused_similarity_weights_the_two_cosines():
    a, b = np.eye(3, 4, dtype=np.float32), np.eye(3, 4, dtype=np.float32)[::-1]
    fused = fused_similarity(a, b, a, a, lyrics_weight=0.25)
    np.testing.assert_allclose(fused, 0.25 * (a @ b.T) + 0.75 * np.eye(3), atol=1e-6)
    with pytest.raises(ValueError, match="lyrics_weight"):
        fused_similarity(a, b, a, b, lyrics_weight=2)


@pytest.fixture
def inputs(sample_clips, tmp_path):
    """Good clips with a non-audio file and a missing one in between (as test_cli's)."""
    junk = tmp_path / "junk.wav"
    junk.write_text("not audio")
    return [str(sample_clips[0]), str(junk), str(sample_clips[1]), str(tmp_path / "missing.flac"), str(sample_clips[2])]


@pytest.fixture(scope="module")
def tiny_lyrics(tmp_path_factory, tiny_export):
    """The tiny export plus a random tiny lyrics model (1 s windows: 100 frames -> 50 positions)."""
    out = tmp_path_factory.mktemp("lyrics") / "export"
    shutil.copytree(tiny_export, out)
    torch.manual_seed(3)
    tower = AudioTower(AudioDims(n_mels=80, n_ctx=50, d_model=16, n_heads=2, n_layers=1, ffn_dim=32), 8).eval()
    decoder = WhisperDecoder(DecoderDims(n_vocab=64, n_ctx=32, d_model=16, n_heads=2, n_layers=2, ffn_dim=32)).eval()
    ref = LyricsReference(LyricsEncoder(tower, decoder), decoder, TINY_VOCAB, None)
    head = WealyHead(HeadDims(d_in=16, d_model=16, n_heads=2, n_layers=4, ffn_dim=32, embed_dim=12)).eval()
    clips = [("noise", np.random.default_rng(0).standard_normal((1, 80, 100)).astype(np.float32))]
    figures = export_lyrics(out, ref, head, clips=clips, max_new_tokens=8)
    return out, ref, head, figures


def test_export_validates_and_lists_the_lyrics_graphs(tiny_lyrics):
    out, _, _, figures = tiny_lyrics
    assert figures["heads"] == "untrained" and figures["state_cosine_min"] >= 0.9999
    manifest = json.loads((out / "manifest.json").read_text())
    towers = {e.get("tower") for e in manifest["artifacts"].values()}
    assert {"lyrics_encoder", "lyrics_decoder", "lyrics_head", "audio", "text"} <= towers
    assert "lyrics.json" in manifest["artifacts"] and "lyrics_warning" in manifest


def test_runtime_embedding_equals_pytorch_pipeline(tiny_lyrics, sample_clips):
    out, ref, head, _ = tiny_lyrics
    model = Lyrics.from_pretrained(out)
    clip = sample_clips[0]
    windows = list(model.windows(str(clip), str(clip)))
    assert windows[0].shape == (1, 80, 100)
    states = np.concatenate([ref.decode_features(w, 8).states for w in windows[: model.max_chunks]])
    with torch.no_grad():
        want = head(torch.from_numpy(states)[None]).numpy()[0]
    got = model.embed_lyrics([str(clip)])[0]
    assert np.dot(got, want) > 0.9999


def test_lyrics_cli_keeps_order_marks_failures(tiny_lyrics, inputs, tmp_path, capsys):
    out, *_ = tiny_lyrics
    npy = tmp_path / "lyr.npy"
    assert cli.main(["lyrics", *inputs, "--model", str(out), "--out", str(npy)]) == 1
    rows = np.load(npy)
    assert rows.shape == (5, 12)
    assert np.isnan(rows[[1, 3]]).all() and not np.isnan(rows[[0, 2, 4]]).any()
    header, sources = read_rows(tmp_path / "lyr.npy.sources.jsonl")
    assert header["tower"] == "lyrics" and [s["source"] for s in sources] == inputs and "missing.flac" in sources[3]["error"]
    expected = Lyrics.from_pretrained(out).embed_lyrics([inputs[0], inputs[2], inputs[4]])
    np.testing.assert_allclose(rows[[0, 2, 4]], expected, atol=1e-6)
    assert "3 ok, 2 failed" in capsys.readouterr().err


def test_lyrics_needs_a_lyrics_export(tiny_export, capsys):
    assert cli.main(["lyrics", "x.flac", "--model", str(tiny_export)]) == 2
    assert "no lyrics model" in capsys.readouterr().err


def test_windows_decoded_together_equal_each_alone(tiny_lyrics, sample_clips):
    out, ref, _, _ = tiny_lyrics
    model = Lyrics.from_pretrained(out)
    windows = np.concatenate([next(model.windows(str(c), str(c))) for c in sample_clips[:3]])
    together = model.decode_windows(windows)
    for i, got in enumerate(together):
        alone = model.decode_windows(windows[i : i + 1])[0]
        want = ref.decode_features(windows[i : i + 1], model.max_new_tokens)
        assert got.tokens == alone.tokens == want.tokens and got.language == want.language
        np.testing.assert_allclose(got.states, want.states, atol=1e-4)
        np.testing.assert_allclose(got.states, alone.states, atol=1e-5)


def test_decoder_graph_has_per_layer_caches(tiny_lyrics):
    import onnx

    out, ref, _, _ = tiny_lyrics
    graph = onnx.load(str(out / "lyrics_decoder.onnx")).graph
    names = [i.name for i in graph.input]
    assert names[0] == "tokens" and "past_k_1" in names and "cross_v_1" in names and "cross_k" not in names
    assert [o.name for o in graph.output][:3] == ["states", "logits", "present_k_0"]


@pytest.fixture(scope="module")
def quantized_lyrics(tiny_lyrics, tmp_path_factory, sample_clips):
    from wavlink_edge.quantization.lyrics import quantize_lyrics

    out = tmp_path_factory.mktemp("lyrics_q") / "export"
    shutil.copytree(tiny_lyrics[0], out)
    lines = []
    # random tiny weights: the gates are for real models (measured on base), so this writes under them
    written = quantize_lyrics(out, ["fp16", "int8"], force=True, log=lines.append, clips=sample_clips[:2])
    return out, written, lines


def test_quantized_lyrics_artifacts_are_listed_with_fidelity_and_serve(quantized_lyrics, sample_clips):
    import onnx

    out, written, lines = quantized_lyrics
    manifest = json.loads((out / "manifest.json").read_text())["artifacts"]
    for precision in ("fp16", "int8"):
        for tower in ("lyrics_encoder", "lyrics_decoder", "lyrics_head"):
            entry = manifest[f"{tower}_{precision}.onnx"]
            assert entry["precision"] == precision and entry["tower"] == tower and entry["source"]["file"] == f"{tower}.onnx"
            fid = entry["fidelity"]
            assert len(fid["clips"]) == 2 and {"differing_tokens", "embedding_cosine"} <= set(fid["clips"][0])
            assert -1 <= fid["embedding_cosine_min"] <= fid["embedding_cosine_mean"] <= 1 + 1e-9
    decoder16 = onnx.load(str(out / "lyrics_decoder_fp16.onnx")).graph
    kinds = {i.name: i.type.tensor_type.elem_type for i in decoder16.input}
    assert kinds["past_k_0"] == kinds["cross_v_1"] == onnx.TensorProto.FLOAT16 and kinds["tokens"] == onnx.TensorProto.INT64
    ops = {n.op_type for n in onnx.load(str(out / "lyrics_decoder_int8.onnx")).graph.node}
    assert "MatMulNBits" in ops
    fp32 = Lyrics.from_pretrained(out).embed_lyrics([str(sample_clips[0])])[0]
    for precision in ("fp16", "int8"):
        model = Lyrics.from_pretrained(out, precision=precision)
        got = model.embed_lyrics([str(sample_clips[0])])[0]
        assert got.dtype == np.float32 and got.shape == fp32.shape
        assert abs(np.linalg.norm(got) - 1) < 1e-3
    assert any("wrote lyrics int8" in line for line in lines)


def test_quantized_lyrics_under_the_gate_are_refused(tiny_lyrics, tmp_path, sample_clips, monkeypatch):
    from wavlink_edge.quantization import lyrics as lq

    out = tmp_path / "export"
    shutil.copytree(tiny_lyrics[0], out)
    monkeypatch.setattr(lq, "EMBEDDING_GATE", (1.5, 1.5))  # no cosine reaches it
    with pytest.raises(lq.LyricsQuantizationError, match="int8"):
        lq.quantize_lyrics(out, ["int8"], log=lambda _: None, clips=sample_clips[:1])
    assert not any("_int8" in name for name in json.loads((out / "manifest.json").read_text())["artifacts"])
    assert not list(out.glob("*int8*")) and not list(out.glob(".tmp-*"))


def test_quantize_lyrics_leaves_exports_without_lyrics_alone(tiny_export):
    from wavlink_edge.quantization.lyrics import quantize_lyrics

    assert quantize_lyrics(tiny_export, ["int8"]) == {}


def test_lyrics_cli_runs_the_chosen_precision(quantized_lyrics, sample_clips, tmp_path):
    out, _, _ = quantized_lyrics
    npy = tmp_path / "lyr8.npy"
    assert cli.main(["lyrics", str(sample_clips[0]), "--model", str(out), "--precision", "int8", "--out", str(npy)]) == 0
    header, _ = read_rows(tmp_path / "lyr8.npy.sources.jsonl")
    assert header["precision"] == "int8"
    np.testing.assert_allclose(np.load(npy)[0], Lyrics.from_pretrained(out, precision="int8").embed_lyrics(
        [str(sample_clips[0])])[0], atol=1e-6)
