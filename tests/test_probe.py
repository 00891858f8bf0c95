"""bench/probe.py: the three dataset layouts, folds, the logistic-regression probe, embeddings through the
runtime (tiny export), the mean-pooled export option, and the Debian-recording class map."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from wavlink_edge.bench import probe

pytest.importorskip("sklearn")
SR = 16000


def tone(path, freq: float, seconds: float = 0.4):
    t = np.arange(int(SR * seconds)) / SR
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR)


def make_esc50(root, per_fold: int = 1):
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for fold in range(1, 6):
        for target, (category, freq) in enumerate((("dog", 300.0), ("rain", 3000.0))):
            for j in range(per_fold):
                name = f"{fold}-{target}{j}-A-{target}.wav"
                tone(root / "audio" / name, freq * (1 + 0.05 * j))
                rows.append(f"{name},{fold},{target},{category},False,{target}{j},A")
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return root


def test_layouts_are_read_and_detected(tmp_path):
    esc = probe.read_dataset(make_esc50(tmp_path / "esc"))
    assert esc.name == "esc50" and esc.folds == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5] and esc.classes == ["dog", "rain"]

    for genre in ("blues", "jazz"):
        for i in range(3):
            tone(tmp_path / "gtzan" / "genres_original" / genre / f"{genre}.{i:05d}.wav", 200 + 100 * i)
    (tmp_path / "gtzan" / "genres_original" / "jazz" / "notes.txt").write_text("not audio")
    gtzan = probe.read_dataset(tmp_path / "gtzan")
    assert gtzan.name == "gtzan" and gtzan.labels == ["blues"] * 3 + ["jazz"] * 3 and gtzan.folds is None

    sc = tmp_path / "sc"
    for word in ("yes", "no"):
        for i in range(3):
            tone(sc / word / f"spk{i}_nohash_0.wav", 500)
    tone(sc / "_background_noise_" / "white_noise.wav", 100)
    (sc / "validation_list.txt").write_text("yes/spk1_nohash_0.wav\n")
    (sc / "testing_list.txt").write_text("yes/spk2_nohash_0.wav\nno/spk2_nohash_0.wav\n")
    commands = probe.read_dataset(sc)
    assert commands.name == "speechcommands" and commands.classes == ["no", "yes"]  # background noise skipped
    assert dict(zip([p.relative_to(sc).as_posix() for p in commands.paths], commands.splits)) == {
        "no/spk0_nohash_0.wav": "train", "no/spk1_nohash_0.wav": "train", "no/spk2_nohash_0.wav": "test",
        "yes/spk0_nohash_0.wav": "train", "yes/spk1_nohash_0.wav": "validation", "yes/spk2_nohash_0.wav": "test"}
    folds, how = probe.fold_ids(commands, 5)
    assert folds.tolist() == [-1, -1, 1, -1, -1, 1] and "testing list" in how

    limited = gtzan.limit_per_class(2)
    assert sorted(limited.labels) == ["blues", "blues", "jazz", "jazz"]
    (tmp_path / "one" / "only").mkdir(parents=True)
    with pytest.raises(probe.ProbeError, match="at least two classes"):
        probe.read_dataset(tmp_path / "one")


def test_probe_scores_separable_features_and_not_noise():
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c"], 20)
    data = probe.LabelledSet("x", [None] * 60, list(labels))
    folds, how = probe.fold_ids(data, 5)
    assert "5 stratified folds" in how and all(set(labels[folds == f]) == {"a", "b", "c"} for f in range(1, 6))
    centres = {"a": 0.0, "b": 4.0, "c": 8.0}
    separable = np.stack([rng.normal(centres[y], 1.0, 16) for y in labels])
    result = probe.probe(separable, labels, folds)
    assert result["accuracy_mean"] == 1.0 and set(result["per_fold"]) == {1, 2, 3, 4, 5} and result["chance"] == 1 / 3
    assert probe.probe(rng.normal(size=(60, 16)), labels, folds)["accuracy_mean"] < 0.7


def test_main_probes_a_runtime_export_and_names_bad_files(tmp_path, tiny_export, capsys):
    root = make_esc50(tmp_path / "esc")
    out = tmp_path / "probe.json"
    names = sorted(p.name for p in (root / "audio").iterdir())
    (root / "groups.csv").write_text("file,demo_split\n" + "".join(
        f"audio/{n},{'test' if n.startswith('1-') else 'train'}\n" for n in names))
    assert probe.main(["--model", str(tiny_export), "--data", str(root), "--out", str(out),
                       "--groups", str(root / "groups.csv"), "--cache", str(tmp_path / "cache")]) == 0
    stdout = capsys.readouterr().out
    assert "esc50: 10 clips, 2 classes" in stdout and "wavlink-tiny-random" in stdout and "test clips" in stdout
    result = json.loads(out.read_text())["results"][0]
    assert result["dims"] == 32 and set(result["per_fold"]) == {"1", "2", "3", "4", "5"}
    assert result["by_group"]["test"]["n"] == 2 and result["by_group"]["train"]["n"] == 8
    assert result["by_group"]["test"]["accuracy"] == result["per_fold"]["1"]  # fold 1 is the "test" group here
    data = probe.read_dataset(root)
    fresh, _ = probe.embed(tiny_export, data.paths)
    again, about = probe.embed(tiny_export, data.paths, cache=tmp_path / "cache")
    assert about.get("cached") and np.array_equal(fresh, again)
    (root / "audio" / "1-00-A-0.wav").write_bytes(b"not audio")
    assert probe.main(["--model", str(tiny_export), "--data", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "1-00-A-0.wav" in err[-1]


def test_mean_pooled_export_matches_the_encoder_and_is_probed(tmp_path):
    torch = pytest.importorskip("torch")
    from wavlink_edge.export.mean_pool import export_mean_pooled
    from wavlink_edge.export.model import AudioDims, AudioTower
    from wavlink_edge.runtime.session import OnnxSession

    torch.manual_seed(0)
    tower = AudioTower(AudioDims(n_mels=80, n_ctx=50, d_model=40, n_heads=20, n_layers=2, ffn_dim=64), 40).eval()
    (tmp_path / "mean").mkdir()
    manifest = export_mean_pooled(tower, tmp_path / "mean", "tiny-mean", {"what": "RANDOM weights", "random": True})
    assert manifest["model"]["matryoshka_dims"] == [40] and "RANDOM" in manifest["warning"]
    mel = torch.randn(3, 80, 70)
    with torch.no_grad():
        expected = tower.frame_states(mel).mean(dim=1).numpy()
    got = OnnxSession(tmp_path / "mean" / "audio.onnx").run({"input_features": mel.numpy()})
    assert np.abs(got - expected).max() < 1e-4
    tone(tmp_path / "a.wav", 440)
    features, about = probe.embed(tmp_path / "mean", [tmp_path / "a.wav"])
    assert features.shape == (1, 40) and about["pooling"].startswith("mean of the encoder")


def test_debian_class_map_names_only_labels_the_corpus_has():
    pytest.importorskip("torch")
    from wavlink_edge.bench import arrange_real
    from wavlink_edge.train.corpus import real

    labels = {c["label"] for split in real.plan(0).values() for c in split}
    named = [label for members in arrange_real.COARSE.values() for label in members]
    assert sorted(set(named) - labels) == [] and len(named) == len(set(named))
    counts = {}
    for clip in arrange_real.plan(0):
        counts[clip["class"]] = counts.get(clip["class"], 0) + 1
    assert counts["speech"] == arrange_real.SPEECH_CAP and min(counts.values()) >= 10
