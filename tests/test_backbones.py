"""Backbones from Hugging Face directories: every Whisper class, CLIP (text-only or full) and BERT towers,
sizes refused from the config, and the random-weight large-shape maker (on tiny shapes)."""
from __future__ import annotations

import gzip
import zipfile

import pytest

torch = pytest.importorskip("torch")

from wavlink_edge.export import backbones, make_random_large  # noqa: E402
from wavlink_edge.export.assemble import main as assemble_main  # noqa: E402
from wavlink_edge.export.model import AUDIO_DIMS  # noqa: E402
from wavlink_edge.runtime.text import TextTokenizer  # noqa: E402

# 20 heads of width 4 and 128 mels: large-v3's head count and front end on a tiny encoder
TINY_LARGE_WHISPER = dict(num_mel_bins=128, d_model=80, encoder_layers=2, encoder_attention_heads=20, encoder_ffn_dim=96,
                          max_source_positions=50, vocab_size=100, decoder_layers=1, decoder_attention_heads=4,
                          decoder_ffn_dim=32, max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                          decoder_start_token_id=1)
MERGES = ["d o", "do g</w>", "b a", "ba r", "bar k", "r a", "ra i", "rai n</w>"]


def tiny_clip_text(**extra) -> dict:
    vocab = 512 + len(MERGES) + 2
    return dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77, projection_dim=48, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                pad_token_id=1, **extra)


def write_tokenizer(directory):
    make_random_large.clip_tokenizer(MERGES).backend_tokenizer.save(str(directory / "tokenizer.json"))


def test_random_large_shapes_are_the_published_ones():
    w, c = make_random_large.WHISPER_LARGE_V3, make_random_large.CLIP_L_TEXT
    large = AUDIO_DIMS["large"]
    assert (w["num_mel_bins"], w["d_model"], w["encoder_attention_heads"], w["encoder_layers"], w["encoder_ffn_dim"]) == (
        large.n_mels, large.d_model, large.n_heads, large.n_layers, large.ffn_dim)
    assert (c["hidden_size"], c["num_hidden_layers"], c["max_position_embeddings"], c["projection_dim"]) == (768, 12, 77, 768)


def test_clip_tokenizer_from_merges_and_readers(tmp_path):
    tok = make_random_large.clip_tokenizer(MERGES).backend_tokenizer
    vocab = tok.get_vocab_size()
    assert vocab == 512 + len(MERGES) + 2
    enc = tok.encode("A Dog barks")  # lower-cased, word-final "</w>", BOS/EOS around
    assert enc.tokens == ["<|startoftext|>", "a</w>", "dog</w>", "bark", "s</w>"] + ["<|endoftext|>"]
    assert enc.ids[0] == vocab - 2 and enc.ids[-1] == vocab - 1
    text = "#version\n" + "\n".join(MERGES) + "\n"
    (tmp_path / "bpe.txt.gz").write_bytes(gzip.compress(text.encode()))
    with zipfile.ZipFile(tmp_path / "open_clip.whl", "w") as wheel:
        wheel.writestr("open_clip/bpe_simple_vocab_16e6.txt.gz", gzip.compress(text.encode()))
    for source in ("bpe.txt.gz", "open_clip.whl"):
        assert make_random_large.read_clip_bpe(tmp_path / source) == MERGES
    with zipfile.ZipFile(tmp_path / "other.whl", "w") as wheel:
        wheel.writestr("x.txt", "")
    with pytest.raises(ValueError, match="no bpe_simple_vocab"):
        make_random_large.read_clip_bpe(tmp_path / "other.whl")


def test_conditional_generation_whisper_and_full_clip_model(tmp_path):
    """An AuT-style WhisperForConditionalGeneration (decoder skipped) and a full CLIPModel directory (vision
    tower skipped) load into exactly HF's encoder and CLIP's projected EOS state, through the runtime's
    tokenizer with padding (77-token limit from the config)."""
    from transformers import CLIPConfig, CLIPModel

    make_random_large.write_whisper(tmp_path / "whisper", 0, **TINY_LARGE_WHISPER)
    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=16)
    clip = CLIPModel(CLIPConfig(text_config=tiny_clip_text(), vision_config=vision, projection_dim=48)).eval()
    clip.save_pretrained(tmp_path / "clip", safe_serialization=True)
    write_tokenizer(tmp_path / "clip")

    model, tokenizer_json = backbones.from_backbones("large", tmp_path / "whisper", tmp_path / "clip")
    assert model.config.text.kind == "clip" and model.config.text.max_length == 77 and model.config.embed_dim == 48
    assert model.config.name == "wavlink-large-random-weights" and "RANDOM" in model.config.sources[0]["what"]
    assert "RANDOM" not in model.config.sources[1]["what"]  # the CLIP directory has no marker
    from transformers import WhisperForConditionalGeneration

    whisper = WhisperForConditionalGeneration.from_pretrained(tmp_path / "whisper").eval()
    mel = torch.randn(2, 128, 60)
    feeds = TextTokenizer.configured(tokenizer_json, model.config.text.max_length, model.config.text.pad_token_id).feeds(
        ["a dog barks", "rain", "bark " * 100])
    ids, mask = torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])
    assert ids.shape[1] == 77 and mask[1].sum() == 3  # truncated at 77; "rain" padded
    with torch.no_grad():
        hf_frames = whisper.model.encoder(torch.nn.functional.pad(mel, (0, 40))).last_hidden_state[:, :30]
        hf_text = clip.text_projection(clip.text_model(input_ids=ids, attention_mask=mask).pooler_output)
        ours_frames = model.audio.frame_states(torch.nn.functional.pad(mel, (0, 40)))[:, :30]
        ours_text = model.text(ids, mask)
    assert (ours_frames - hf_frames).abs().max() < 1e-5
    assert (ours_text - torch.nn.functional.normalize(hf_text, dim=-1)).abs().max() < 1e-5


def test_encoder_only_checkpoint_and_bert_text(tmp_path, tiny_hf_backbones):
    """A WhisperEncoder saved alone (no key prefix) loads; a BERT directory gives its masked mean."""
    from transformers import BertModel, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(1)
    cfg = WhisperConfig(**{**TINY_LARGE_WHISPER, "num_mel_bins": 80})
    encoder = WhisperEncoder(cfg).eval()
    encoder.save_pretrained(tmp_path / "encoder", safe_serialization=True)
    bert_dir = tiny_hf_backbones[1]
    model, _ = backbones.from_backbones("base", tmp_path / "encoder", bert_dir)
    assert model.config.text.kind == "bert" and model.config.name == "wavlink-base"
    mel = torch.randn(1, 80, 100)
    bert = BertModel.from_pretrained(bert_dir, add_pooling_layer=False).eval()
    ids, mask = torch.tensor([[101, 2000, 3000, 102], [101, 2000, 102, 0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with torch.no_grad():
        assert (model.audio.frame_states(mel) - encoder(mel).last_hidden_state).abs().max() < 1e-5
        states = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        mean = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        assert (model.text.pooled(ids, mask) - mean).abs().max() < 1e-5


def test_assemble_refuses_a_size_mismatch_from_the_config_alone(tmp_path, tiny_hf_backbones, capsys):
    """The shape is read from config.json and refused before any weight file is opened (there is none)."""
    from transformers import WhisperConfig

    WhisperConfig(**TINY_LARGE_WHISPER).save_pretrained(tmp_path / "config-only")
    capsys.readouterr()
    rc = assemble_main(["--size", "large", "--whisper", str(tmp_path / "config-only"), "--text", str(tiny_hf_backbones[1]),
                        "--out", str(tmp_path / "ck")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "not a large encoder: d_model 80 (a large has 1280), n_layers 2 (a large has 32)" in err
    (tmp_path / "notwhisper").mkdir()
    (tmp_path / "notwhisper" / "config.json").write_text('{"model_type": "bert"}')
    assert assemble_main(["--size", "large", "--whisper", str(tmp_path / "notwhisper"), "--text",
                          str(tiny_hf_backbones[1]), "--out", str(tmp_path / "ck")]) == 2
    assert "not a Whisper config (model_type 'bert'" in capsys.readouterr().err
