"""bench.data.prepare.spc on tiny but real Speech Commands trees (wav files, list files, noise folder)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bench.data.audio import AudioError
from bench.cli import main
from bench.data.manifest import read_manifest
from bench.data.prepare.common import CorpusLayoutError
from bench.data.prepare.spc import V001_WORDS, V002_WORDS, prepare_spc

SPEAKERS = ("0a7c2a8d", "1b2c3d4e", "c0ffee01")
CLIP_SAMPLES = 1600  # 0.1 s at 16 kHz: enough to be real audio, small enough to be fast


def write_tone(path: Path, freq: float, sr: int = 16_000, seconds: float = 0.1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(round(seconds * sr))) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, subtype="PCM_16")


def make_spc_tree(root: Path, version: str = "v0.01") -> dict[str, list[str]]:
    """A complete word-folder set with 1-3 clips per word, official-style lists and a noise file.

    Word i has speakers SPEAKERS[: 1 + i % 3]; the second speaker's clips are listed for
    validation and the third's for testing, so the expected split of every clip is known.
    Returns {"train"|"valid"|"test": ["word/file.wav", ...]}.
    """
    words = V001_WORDS if version == "v0.01" else V002_WORDS
    expected: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for i, word in enumerate(words):
        for k, speaker in enumerate(SPEAKERS[: 1 + i % 3]):
            name = f"{speaker}_nohash_{k % 2}.wav"
            write_tone(root / word / name, 200.0 + 25 * i + 7 * k)
            expected[("train", "valid", "test")[k]].append(f"{word}/{name}")
    (root / "validation_list.txt").write_text("\n".join(expected["valid"]) + "\n")
    (root / "testing_list.txt").write_text("\n".join(expected["test"]) + "\n")
    noise = root / "_background_noise_" / "white_noise.wav"
    noise.parent.mkdir()
    sf.write(noise, np.random.default_rng(0).normal(0, 0.1, 16_000).astype(np.float32), 16_000)
    (root / "_background_noise_" / "README.md").write_text("noise")
    (root / "README.md").write_text("Speech Commands")
    return expected


@pytest.fixture()
def spc_tree(tmp_path: Path) -> tuple[Path, dict[str, list[str]]]:
    root = tmp_path / "speech_commands"
    return root, make_spc_tree(root)


def test_v001_manifest(spc_tree: tuple[Path, dict[str, list[str]]], tmp_path: Path) -> None:
    root, expected = spc_tree
    path = prepare_spc(root, tmp_path / "out", progress=False)
    assert path == tmp_path / "out" / "manifest.csv"
    manifest = read_manifest(path)
    t = manifest.table.set_index("clip_id")
    n_clips = sum(len(v) for v in expected.values())
    assert len(t) == n_clips == sum(1 + i % 3 for i in range(30))
    for split, rels in expected.items():
        for rel in rels:
            clip_id = rel[: -len(".wav")]
            assert t.loc[clip_id, "split"] == split
            assert t.loc[clip_id, "label"] == rel.split("/")[0]
            assert t.loc[clip_id, "speaker"] == rel.split("/")[1].split("_nohash_")[0]
            assert Path(t.loc[clip_id, "audio_path"]) == root.resolve() / rel
    assert Path(t["audio_path"].iloc[0]).is_absolute()
    assert set(t["num_samples"]) == {CLIP_SAMPLES}
    assert set(t["sample_rate"]) == {16_000}
    assert manifest.labels == sorted(V001_WORDS)
    assert manifest.speakers == sorted(SPEAKERS)
    meta = manifest.meta
    assert meta["name"] == "spc-v0.01" and meta["version"] == "v0.01"
    assert meta["source"] == str(root.resolve())
    assert meta["noise_sources"] == [str(root.resolve() / "_background_noise_" / "white_noise.wav")]
    assert meta["skipped_files"] == [] and meta["ignored_files"] == []
    assert meta["labels"] == sorted(V001_WORDS)
    assert meta["counts"] == {s: len(v) for s, v in expected.items()}
    assert not any("_background_noise_" in p for p in t["audio_path"])


def test_v002_detection(tmp_path: Path) -> None:
    root = tmp_path / "sc2"
    make_spc_tree(root, version="v0.02")
    manifest = read_manifest(prepare_spc(root, tmp_path / "out", progress=False))
    assert manifest.meta["version"] == "v0.02"
    assert manifest.meta["name"] == "spc-v0.02"
    assert manifest.labels == sorted(V002_WORDS) and len(manifest.labels) == 35


def test_default_out_dir_is_prepared_dir(spc_tree: tuple[Path, dict[str, list[str]]], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVBENCH_DATA", str(tmp_path / "data"))
    path = prepare_spc(spc_tree[0], progress=False)
    assert path == tmp_path / "data" / "prepared" / "spc-v0.01" / "manifest.csv"


def test_other_sample_rates_are_counted_at_16k(spc_tree: tuple[Path, dict[str, list[str]]],
                                               tmp_path: Path) -> None:
    root, _ = spc_tree
    write_tone(root / "yes" / "0a7c2a8d_nohash_0.wav", 300.0, sr=44_100, seconds=0.5)
    t = read_manifest(prepare_spc(root, tmp_path / "out", progress=False)).table.set_index("clip_id")
    assert t.loc["yes/0a7c2a8d_nohash_0", "num_samples"] == 8000
    assert t.loc["yes/0a7c2a8d_nohash_0", "sample_rate"] == 16_000


def corrupt(path: Path) -> None:
    path.write_bytes(b"RIFF\x00\x00garbage" + bytes(range(200)))


def test_corrupt_wav_errors_by_default(spc_tree: tuple[Path, dict[str, list[str]]], tmp_path: Path) -> None:
    root, _ = spc_tree
    corrupt(root / "dog" / "0a7c2a8d_nohash_0.wav")
    with pytest.raises(AudioError) as exc:
        prepare_spc(root, tmp_path / "out", progress=False)
    assert str(root.resolve() / "dog" / "0a7c2a8d_nohash_0.wav") in str(exc.value)
    assert "--on-bad-audio skip" in str(exc.value)
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_bad_files_are_skipped_and_listed(spc_tree: tuple[Path, dict[str, list[str]]], tmp_path: Path) -> None:
    root, expected = spc_tree
    corrupt(root / "dog" / "0a7c2a8d_nohash_0.wav")
    sf.write(root / "cat" / "0a7c2a8d_nohash_0.wav", np.zeros(1600, np.float32), 16_000)  # silent
    manifest = read_manifest(prepare_spc(root, tmp_path / "out", on_bad_audio="skip", progress=False))
    ids = set(manifest.table["clip_id"])
    assert "dog/0a7c2a8d_nohash_0" not in ids and "cat/0a7c2a8d_nohash_0" not in ids
    assert len(ids) == sum(len(v) for v in expected.values()) - 2
    skipped = manifest.meta["skipped_files"]
    assert [Path(s["path"]).relative_to(root.resolve()).as_posix() for s in skipped] == [
        "cat/0a7c2a8d_nohash_0.wav", "dog/0a7c2a8d_nohash_0.wav"]
    assert "silence" in skipped[0]["error"] and "cannot be read" in skipped[1]["error"]


def test_process_pool_gives_the_same_manifest(spc_tree: tuple[Path, dict[str, list[str]]],
                                              tmp_path: Path) -> None:
    root, _ = spc_tree
    corrupt(root / "dog" / "0a7c2a8d_nohash_0.wav")
    serial = prepare_spc(root, tmp_path / "serial", on_bad_audio="skip", progress=False, workers=1)
    pooled = prepare_spc(root, tmp_path / "pooled", on_bad_audio="skip", progress=False, workers=2)
    assert serial.read_bytes() == pooled.read_bytes()
    assert (json.loads((tmp_path / "serial" / "manifest.json").read_text())["skipped_files"]
            == json.loads((tmp_path / "pooled" / "manifest.json").read_text())["skipped_files"])
    with pytest.raises(AudioError, match="dog/0a7c2a8d_nohash_0.wav"):
        prepare_spc(root, tmp_path / "pooled_error", progress=False, workers=2)


def test_stray_wavs_are_ignored_and_listed(spc_tree: tuple[Path, dict[str, list[str]]], tmp_path: Path) -> None:
    root, expected = spc_tree
    write_tone(root / "stray.wav", 500.0)
    write_tone(root / "yes" / "extra" / "0a7c2a8d_nohash_5.wav", 500.0)
    manifest = read_manifest(prepare_spc(root, tmp_path / "out", progress=False))
    assert len(manifest.table) == sum(len(v) for v in expected.values())
    assert manifest.meta["ignored_files"] == ["stray.wav", "yes/extra/0a7c2a8d_nohash_5.wav"]


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(CorpusLayoutError, match="no such folder") as exc:
        prepare_spc(tmp_path / "nope", tmp_path / "out", progress=False)
    assert str(tmp_path / "nope") in str(exc.value)


def test_no_word_folders(tmp_path: Path) -> None:
    (tmp_path / "empty" / "_background_noise_").mkdir(parents=True)
    with pytest.raises(CorpusLayoutError, match="no word folders") as exc:
        prepare_spc(tmp_path / "empty", tmp_path / "out", progress=False)
    assert str(tmp_path / "empty") in str(exc.value)


@pytest.mark.parametrize("name", ["testing_list.txt", "validation_list.txt"])
def test_missing_list_file(spc_tree: tuple[Path, dict[str, list[str]]], tmp_path: Path, name: str) -> None:
    root, _ = spc_tree
    (root / name).unlink()
    with pytest.raises(CorpusLayoutError, match="split list missing") as exc:
        prepare_spc(root, tmp_path / "out", progress=False)
    assert str(root.resolve() / name) in str(exc.value)


def test_list_naming_missing_files(spc_tree: tuple[Path, dict[str, list[str]]], tmp_path: Path) -> None:
    root, expected = spc_tree
    (root / expected["test"][0]).unlink()
    (root / expected["test"][1]).unlink()
    with pytest.raises(CorpusLayoutError) as exc:
        prepare_spc(root, tmp_path / "out", progress=False)
    message = str(exc.value)
    assert "testing_list.txt" in message and "2 file(s)" in message
    assert f"first: {expected['test'][0]}" in message


def test_unknown_word_folder(spc_tree: tuple[Path, dict[str, list[str]]], tmp_path: Path) -> None:
    root, _ = spc_tree
    write_tone(root / "banana" / "0a7c2a8d_nohash_0.wav", 300.0)
    with pytest.raises(CorpusLayoutError, match="banana") as exc:
        prepare_spc(root, tmp_path / "out", progress=False)
    assert str(root.resolve()) in str(exc.value)


def test_incomplete_word_set(tmp_path: Path) -> None:
    root = tmp_path / "sc2"
    make_spc_tree(root, version="v0.02")
    # backward, follow, forward still mark the tree as v0.02, which needs all 35 words.
    for word in ("learn", "visual"):
        for f in (root / word).iterdir():
            f.unlink()
        (root / word).rmdir()
    with pytest.raises(CorpusLayoutError, match=r"v0\.02.*learn, visual.*missing"):
        prepare_spc(root, tmp_path / "out", progress=False)


def test_badly_named_wav(spc_tree: tuple[Path, dict[str, list[str]]], tmp_path: Path) -> None:
    root, _ = spc_tree
    write_tone(root / "yes" / "recording.wav", 300.0)
    with pytest.raises(CorpusLayoutError, match="yes/recording.wav"):
        prepare_spc(root, tmp_path / "out", progress=False)


def test_cli_prepare_spc(spc_tree: tuple[Path, dict[str, list[str]]], tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = spc_tree
    out = tmp_path / "out"
    assert main(["-q", "prepare", "spc", str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "spc-v0.01" in printed and str(out / "manifest.csv") in printed
    assert (out / "manifest.csv").is_file()

    (root / "testing_list.txt").unlink()
    assert main(["-q", "prepare", "spc", str(root), "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert "avbench: error:" in err and "testing_list.txt" in err

    corrupt(root / "dog" / "0a7c2a8d_nohash_0.wav")
    (root / "testing_list.txt").write_text("")
    assert main(["-q", "prepare", "spc", str(root), "--out", str(tmp_path / "out3")]) == 2
    assert "dog/0a7c2a8d_nohash_0.wav" in capsys.readouterr().err
    assert main(["-q", "prepare", "spc", str(root), "--out", str(tmp_path / "out3"),
                 "--on-bad-audio", "skip"]) == 0
    assert "skipped: 1 bad file(s)" in capsys.readouterr().out
