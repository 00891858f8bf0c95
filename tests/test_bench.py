"""Benchmark suite: the math (FLOPs, metrics), the dataset loaders on fixtures in the real formats, and a
--quick smoke run of the whole report that checks the output schema (not the speed)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wavlink_edge.bench import datasets as D
from wavlink_edge.bench import flops, latency, machine, report
from wavlink_edge.runtime.vectors import truncate
from wavlink_edge.train import metrics

# --- FLOPs -----------------------------------------------------------------------------------------

def test_audio_flops_match_torch_count_for_pruned_and_full_passes():
    torch = pytest.importorskip("torch")
    from wavlink_edge.export.model import AudioDims, AudioTower

    dims = AudioDims(n_mels=16, n_ctx=64, d_model=32, n_heads=4, n_layers=3, ffn_dim=64)
    tower = AudioTower(dims, embed_dim=24).eval()
    mel = torch.zeros(1, 16, 50)
    kw = dict(n_mels=16, d_model=32, n_layers=3, ffn_dim=64)
    assert flops.audio_encoder_flops(50, embed_dim=24, **kw) == flops.counted_flops(tower, mel)
    assert flops.audio_encoder_flops(50, embed_dim=24, prune_last_layer=False, **kw) == \
        flops.counted_flops(lambda m: tower(m, prune_last_layer=False), mel)
    assert flops.audio_encoder_flops(50, global_token=False, prune_last_layer=False, **kw) == \
        flops.counted_flops(tower.frame_states, mel)


def test_bert_flops_match_torch_count():
    torch = pytest.importorskip("torch")
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    cfg._attn_implementation = "eager"  # the graph WavLink exports; SDPA hides its matmuls from the counter
    model = BertModel(cfg, add_pooling_layer=False).eval()
    ids = torch.ones(1, 7, dtype=torch.long)
    assert flops.bert_flops(7, 32, 2, 64) == flops.counted_flops(lambda i: model(input_ids=i, attention_mask=torch.ones_like(i)), ids)


def test_peak_uses_isa_and_core_count():
    per_cycle = machine.flops_per_cycle({"avx2", "fma"})
    assert per_cycle["fp32_flops_per_cycle"] == 32 and per_cycle["int8_ops_per_cycle"] == 64
    assert machine.flops_per_cycle({"avx512f", "avx512_vnni"})["int8_ops_per_cycle"] == 256
    assert machine.peak(2, 2.0, per_cycle)["fp32_gflops"] == 128.0
    desc = machine.describe()
    assert desc["usable_cores"] >= 1 and "avx2" in desc["isa"] and desc["libraries"]


# --- metrics ---------------------------------------------------------------------------------------

def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_retrieval_metrics_on_a_hand_made_case():
    audio = np.eye(3, dtype=np.float32)
    # captions 0,1 describe clip 0; caption 2 clip 1 (but points at clip 2); caption 3 clip 2
    text = _unit(np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 0.2, 1], [0, 0, 1]], dtype=np.float32))
    owner = np.array([0, 0, 1, 2])
    m = metrics.retrieval(audio, text, owner)
    assert m["t2a_r1"] == pytest.approx(3 / 4) and m["t2a_r5"] == 1.0
    assert m["t2a_map10"] == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    # A2T: clip 0 ranks its captions 0, 1 first and second (AP 1); clips 1 and 2 each rank their one caption first
    assert m["a2t_r1"] == 1.0 and m["a2t_map10"] == pytest.approx(1.0)
    # a clip whose only caption ranks 2nd: AP@10 = 1/2
    m2 = metrics.retrieval(audio[:2], _unit(np.array([[1, 1, 0], [0, 1, 2]], dtype=np.float32)), np.array([0, 1]))
    assert m2["a2t_r1"] == 0.5 and m2["a2t_map10"] == pytest.approx(0.75)


def test_truncate_renormalises_and_fidelity_is_one_for_identical():
    x = _unit(np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32))
    t = truncate(x, 4)
    assert t.shape == (5, 4) and np.allclose(np.linalg.norm(t, axis=1), 1)
    fid = metrics.fidelity(t, t, t, t, "retrieval")
    assert fid["audio_cosine_min"] == pytest.approx(1) and fid["t2a_top1_agreement"] == 1.0


def test_classification_metrics():
    audio = np.eye(3, dtype=np.float32)
    m = metrics.classification(audio, np.eye(3, dtype=np.float32), np.array([0, 1, 0]))
    assert m["top1"] == pytest.approx(2 / 3) and m["top5"] == 1.0


# --- loaders on fixture files in the exact public formats -----------------------------------------

def _wav(path: Path, seconds: float = 0.5, sr: int = 44100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.sin(np.arange(int(sr * seconds)) / 10).astype(np.float32) * 0.1, sr)


def test_clotho_loader(tmp_path):
    with open(tmp_path / "clotho_captions_evaluation.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name"] + [f"caption_{i}" for i in range(1, 6)])
        w.writerow(["a b.wav"] + [f"a{i}, with comma" for i in range(5)])
        w.writerow(["missing.wav"] + [f"m{i}" for i in range(5)])
        w.writerow(["c.wav"] + [f"c{i}" for i in range(5)])
    _wav(tmp_path / "evaluation" / "a b.wav")
    _wav(tmp_path / "evaluation" / "c.wav")
    ds = D.load_clotho(tmp_path)
    assert ds.task == "retrieval" and len(ds.audio) == 2 and ds.missing_audio == 1
    assert ds.captions[0][0] == "a0, with comma" and len(ds.captions[1]) == 5
    texts, owner = ds.texts()
    assert len(texts) == 10 and list(owner[:6]) == [0, 0, 0, 0, 0, 1]
    wave = D.load_wave(ds.audio[0])
    assert wave.dtype == np.float32 and abs(wave.size - 8000) <= 2  # resampled 44.1 kHz -> 16 kHz


def test_audiocaps_loader_groups_rows_per_clip(tmp_path):
    rows = [("1", "yid_A", "30", "a dog barks"), ("2", "yid_B", "0", "rain falls"),
            ("3", "yid_A", "30", "a dog is barking"), ("4", "yid_C", "10", "no audio for this one")]
    with open(tmp_path / "test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["audiocap_id", "youtube_id", "start_time", "caption"])
        w.writerows(rows)
    _wav(tmp_path / "audio" / "yid_A.wav")
    _wav(tmp_path / "audio" / "yid_B_0.flac")  # some downloaders append the start time
    ds = D.parse_spec(f"audiocaps:{tmp_path / 'test.csv'}:{tmp_path / 'audio'}")
    assert [Path(p).name for p in ds.audio] == ["yid_A.wav", "yid_B_0.flac"]
    assert ds.captions == [["a dog barks", "a dog is barking"], ["rain falls"]] and ds.missing_audio == 1


def test_esc50_loader_zero_shot_prompts(tmp_path):
    (tmp_path / "meta").mkdir()
    with open(tmp_path / "meta" / "esc50.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        w.writerow(["1-100-A-0.wav", 1, 0, "dog", True, 100, "A"])
        w.writerow(["2-200-A-41.wav", 2, 41, "chainsaw", False, 200, "A"])
        w.writerow(["1-300-A-10.wav", 1, 10, "rain", True, 300, "A"])
    for name in ("1-100-A-0.wav", "2-200-A-41.wav", "1-300-A-10.wav"):
        _wav(tmp_path / "audio" / name)
    ds = D.load_esc50(tmp_path)
    assert ds.task == "classification" and ds.classes == ["dog", "rain", "chainsaw"]
    assert ds.labels == [0, 2, 1] and ds.prompts[2] == "the sound of chainsaw"
    assert len(D.load_esc50(tmp_path, folds=[1]).audio) == 2


def test_builtin_eval_split_loads():
    if not (D.BUILTIN / "captions_test.csv").is_file():
        pytest.skip("bundled eval split not present")
    ds = D.load_builtin()
    assert len(ds.audio) > 0 and ds.missing_audio == 0 and all(len(c) == 5 for c in ds.captions)


# --- planning and schema ---------------------------------------------------------------------------

def test_pad_rows_share_one_measurement():
    cells, rows = latency.plan_cells("audio", latency.FULL)
    assert {c["frames"] for c in cells} == {500, 1000, 3000} and len(cells) == 9
    assert len(rows) == 18 and sum(r["shared_with"] is not None for r in rows) == 9


def test_schema_validation_rejects_incomplete_documents():
    with pytest.raises(report.SchemaError):
        report.validate({"schema": report.SCHEMA, "kind": "latency"})
    doc = {"schema": "other/1", "kind": "latency", "command": "", "created": "", "model": {"heads": "x"}, "machine": {}}
    with pytest.raises(report.SchemaError, match="schema"):
        report.validate(doc)


# --- smoke: the whole --quick report on the real base export ----------------------------------------

@pytest.fixture(scope="module")
def quick_report(base_export, tmp_path_factory):
    from wavlink_edge.bench import run_all

    out = tmp_path_factory.mktemp("bench")
    # encoders.py (interleaved bursts, files/s, 2 h RSS) has its own tests; the smoke run checks the rest
    assert run_all.main(["--model", str(base_export), "--quick", "--encoder-rounds", "0", "--out", str(out),
                         "--no-progress"]) == 0
    return out


def test_quick_report_schema(quick_report):
    lat = report.validate(json.loads((quick_report / "latency.json").read_text()))
    rec = report.validate(json.loads((quick_report / "recall.json").read_text()))
    for doc in (lat, rec):
        assert doc["schema"] == "wavlink-edge-bench/1" and doc["model"]["heads"] in ("trained", "untrained")
        assert doc["command"].startswith("wavlink-edge bench all --model")
    engines = {r["engine"] for r in lat["rows"]}
    assert {"pytorch", "onnxruntime", "ctranslate2", "sentence-transformers"} <= engines
    ref = [r for r in lat["rows"] if r["reference"]]
    assert ref and all(r["speedup_vs_pytorch"] == 1.0 for r in ref)
    assert all(r["repeats"] >= 2 and r["p95_ms"] >= r["p50_ms"] > 0 for r in lat["rows"])
    assert all(b.get("cold_start", {}).get("total_s", 0) > 0 for b in lat["backends"]), lat["backends"]
    audio_flops = lat["flops"]["audio"]["500"]
    assert audio_flops["wavlink"] == audio_flops["counted_reference"]
    ort_fp32 = [r for r in rec["rows"] if r["engine"] == "onnxruntime" and r["precision"] == "fp32"]
    assert ort_fp32 and all(r["fidelity"]["audio_cosine_min"] > 0.9999 for r in ort_fp32)
    for name in ("latency.md", "recall.md", "README.md", "latency_vs_batch.png", "pad_vs_trim.png", "tradeoff.png"):
        assert (quick_report / name).stat().st_size > 0
    if lat["model"]["heads"] != "trained":
        assert "untrained heads" in (quick_report / "README.md").read_text()


def test_recall_rows_deltas_and_markdown_for_both_tasks():
    from wavlink_edge.bench import backends as B
    from wavlink_edge.bench import recall

    rng = np.random.default_rng(0)
    ref_spec = B.Spec("pytorch-audio-fp32", "PyTorch", "audio", "pytorch", "fp32", reference=True)
    q_spec = B.Spec("ort-cpu-audio-int8-dynamic", "ORT int8", "audio", "onnxruntime", "int8", "dynamic")
    audio, text = _unit(rng.standard_normal((6, 8))), _unit(rng.standard_normal((6, 8)))
    noisy = _unit(audio + 0.05 * rng.standard_normal(audio.shape))
    retrieval = D.Dataset("toy", "retrieval", [f"{i}.wav" for i in range(6)], captions=[[f"c{i}"] for i in range(6)])
    esc = D.Dataset("toy_esc", "classification", [f"{i}.wav" for i in range(6)], labels=[0, 1, 2, 0, 1, 2],
                    classes=["dog", "rain", "siren"])
    rows = []
    for ds, t in ((retrieval, text), (esc, text[:3])):
        owner = ds.texts()[1]
        rows += recall.evaluate(ds, ref_spec, "trim", [8, 4], audio, t, owner, None)
        rows += recall.evaluate(ds, ref_spec, "pad", [8, 4], noisy, t, owner, None)
        rows += recall.evaluate(ds, q_spec, "trim", [8, 4], noisy, t, owner, (audio, t))
    recall.add_deltas(rows, "trim")
    assert all(r["delta"] is None for r in rows if r["reference"] and r["policy"] == "trim")
    assert all(r["delta"] is not None for r in rows if not (r["reference"] and r["policy"] == "trim"))
    q = [r for r in rows if not r["reference"]]
    assert all(0.9 < r["fidelity"]["audio_cosine_mean"] <= 1.0001 and r["fidelity"]["text_cosine_min"] > 0.9999 for r in q)
    doc = {"schema": report.SCHEMA, "kind": "recall", "command": "x", "created": "now",
           "model": {"name": "m", "heads": "untrained", "clip_policy": "trim", "artifacts_digest": "0", "untrained_heads": True},
           "machine": machine.describe(), "settings": {"notes": "n"}, "rows": rows,
           "datasets": [retrieval.summary(), esc.summary()]}
    md = report.recall_markdown(report.validate(doc))
    assert "untrained heads" in md and "top-1 acc" in md and "T2A R@1" in md
