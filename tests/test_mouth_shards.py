"""LRW mouth crops decoded once into memory-mapped shards (bench.data.mouth_shards), on real mp4s
written with PyAV: the same bytes as decoding the mp4, no mp4 opened once they exist, stale shards
refused, the CLI flag, and nothing half-written left by a failure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from test_prepare_lrw import CLIP_SECONDS, N_CLIPS, garbage_bytes, make_lrw_tree, mux_audio, write_clip
from test_visual import _pretext

import bench.data.video
from bench.cli import main
from bench.data.manifest import read_manifest, write_manifest
from bench.data.mouth_frames import SAMPLES_PER_FRAME, MouthFrameSource
from bench.data.mouth_shards import SHARD_FOLDER, MouthShards, write_mouth_shards
from bench.data.prepare.lrw import prepare_lrw
from bench.data.video import VideoError
from bench.errors import ConfigError
from bench.pretrain.loop import CropSampler


def write_distinct_video(path: Path, seed: int) -> None:
    """Replace a clip's video by one of its own (test_prepare_lrw's clips all share one picture), so
    that a clip read from the wrong place in a shard shows; its audio is a tone as there."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=25)
        video.width, video.height, video.pix_fmt = 256, 256, "yuv420p"
        audio = container.add_stream("aac", rate=16_000)
        audio.layout = "mono"
        texture = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8).repeat(16, 0).repeat(16, 1)
        for i in range(29):
            img = np.roll(texture, (seed + i) % 16, axis=1)
            for packet in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        n = round(CLIP_SECONDS * 16_000)
        tone = (0.3 * np.sin(2 * np.pi * (300 + 20 * seed) * np.arange(n) / 16_000)).astype(np.float32)
        mux_audio(container, audio, tone)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_lrw_tree(tmp_path_factory.mktemp("lrw_shards"))
    for seed, mp4 in enumerate(sorted(root.rglob("*.mp4"))):
        write_distinct_video(mp4, seed)
    return root


@pytest.fixture()
def lrw(pristine: Path, tmp_path: Path) -> Path:
    shutil.copytree(pristine, tmp_path / "lipread_mp4")
    return tmp_path / "lipread_mp4"


def _prepared(lrw: Path, out: Path, **kw):
    return read_manifest(prepare_lrw(lrw, out, progress=False, **kw))


def _mp4_frames(manifest, size: int = 64) -> list[np.ndarray]:
    """Every clip's frames as MouthFrameSource decodes them from the mp4 (no shards there yet)."""
    assert not (manifest.root / SHARD_FOLDER).exists()
    source = MouthFrameSource(manifest, size=size)
    frames = [np.array(source.clip_frames(r)) for r in range(len(manifest.table))]
    assert source.decoded_clips == len(manifest.table)
    return frames


def _no_mp4(*args, **kwargs):
    raise AssertionError("an mp4 was decoded although mouth shards exist")


def test_shards_hold_the_frames_mp4_decoding_gives(lrw: Path, tmp_path: Path) -> None:
    manifest = _prepared(lrw, tmp_path / "out")
    csv_before, id_before = manifest.path.read_bytes(), manifest.manifest_id
    expected = _mp4_frames(manifest)
    written = write_mouth_shards(manifest, workers=2, progress=False, clips_per_shard=3)  # 3 + 3 + 2 clips
    assert written.clips == N_CLIPS and written.folder == manifest.root / SHARD_FOLDER
    assert sorted(p.name for p in written.folder.iterdir()) == [
        "audio-00000.i16", "audio-00001.i16", "audio-00002.i16",
        "frames-00000.u8", "frames-00001.u8", "frames-00002.u8", "index.json"]
    assert written.bytes == sum(p.stat().st_size for p in written.folder.iterdir())
    assert (written.folder / "frames-00002.u8").stat().st_size == 2 * 29 * 64 * 64
    # The manifest is untouched: shards are a cache beside it.
    reread = read_manifest(manifest.path)
    assert reread.path.read_bytes() == csv_before and reread.manifest_id == id_before
    index = json.loads((written.folder / "index.json").read_text())
    assert (index["size"], index["frames_per_clip"], index["mouth_crop"]) == (64, 29, manifest.meta["mouth_crop"])
    assert index["manifest_id"] == id_before
    assert index["clips"]["clip_id"] == manifest.table["clip_id"].tolist()
    assert index["clips"]["shard"] == [0, 0, 0, 1, 1, 1, 2, 2] and index["clips"]["position"] == [0, 1, 2] * 2 + [0, 1]

    assert len({frames.tobytes() for frames in expected}) == N_CLIPS  # every clip looks different
    shards = MouthShards.open(reread)
    assert shards.size == 64
    for row in range(N_CLIPS):
        frames = shards.frames(row)
        assert isinstance(frames, np.memmap) and not frames.flags.writeable  # a view of the map, no copy
        assert frames.dtype == np.uint8 and frames.shape == (29, 64, 64)
        assert frames.tobytes() == expected[row].tobytes()
        wav, _ = sf.read(str(reread.resolve(reread.table["audio_path"].iloc[row])), dtype="int16")
        audio = shards.audio(row)
        assert audio.dtype == np.int16 and np.array_equal(audio, wav)
        assert len(audio) == reread.table["num_samples"].iloc[row]


def test_short_clips_are_zero_padded_and_keep_their_frame_count(lrw: Path, tmp_path: Path) -> None:
    prepared = _prepared(lrw, tmp_path / "prepared")
    short = tmp_path / "short.mp4"
    write_clip(short, frames=20)  # the preparer refuses such clips; a hand-made manifest may hold one
    table = prepared.table.copy()
    table["audio_path"] = [str(prepared.resolve(p)) for p in table["audio_path"]]
    table.loc[1, "video_path"] = str(short)
    manifest = read_manifest(write_manifest(table, tmp_path / "hand", prepared.meta))
    expected = _mp4_frames(manifest)
    write_mouth_shards(manifest, workers=1, progress=False)
    shards = MouthShards.open(manifest)
    assert shards.frames(1).shape == (20, 64, 64) and np.array_equal(shards.frames(1), expected[1])
    frames = np.memmap(manifest.root / SHARD_FOLDER / "frames-00000.u8", np.uint8, "r", shape=(N_CLIPS, 29, 64, 64))
    assert not frames[1, 20:].any()
    source = MouthFrameSource(manifest)
    tail, real = source.frames(1, 15, 10)
    assert real == 5 and np.array_equal(tail[:5], expected[1][15:] / np.float32(255)) and not tail[5:].any()


def test_the_visual_pretext_opens_no_mp4_when_shards_exist(lrw: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = _prepared(lrw, tmp_path / "out")
    reference = MouthFrameSource(manifest)
    rows, firsts = [0, 3, 5, 3], [0, 4, 2, 1]
    want = reference.batch(rows, firsts, 25)
    want_tails = reference.batch(rows, [0, 28, 29, 20], 30)  # padding past the clip's 29 frames
    assert want_tails[1].tolist() == [29, 1, 0, 9]
    assert reference.describe()["source"] == "mp4 (decoded)"
    write_mouth_shards(manifest, workers=1, progress=False)
    monkeypatch.setattr(bench.data.video, "read_video_frames", _no_mp4)
    source = MouthFrameSource(manifest)
    got = source.batch(rows, firsts, 25)
    for a, b in zip(got + source.batch(rows, [0, 28, 29, 20], 30), want + want_tails):
        assert a.dtype == b.dtype and torch.equal(a, b)
    with pytest.raises(IndexError, match="row -1 is outside"):
        source.batch([-1], [0], 25)
    assert source.decoded_clips == 0 and "mouth shards" in source.describe()["source"]
    # The pretext's own step: crops of the loop's sampler, frames from the shards, a finite loss.
    pretext = _pretext(manifest)
    wav, lengths, info = CropSampler(manifest, ("train",), 4, 16_000, seed=0, align=SAMPLES_PER_FRAME).batch(0)
    assert torch.isfinite(pretext(wav, lengths, info=info)["loss"])
    assert pretext.mouths.decoded_clips == 0
    assert "mouth shards" in pretext.config()["frames"]["source"]


def test_shards_of_another_size_fall_back_to_the_mp4s(lrw: Path, tmp_path: Path) -> None:
    manifest = _prepared(lrw, tmp_path / "out")
    write_mouth_shards(manifest, size=32, workers=1, progress=False)
    source = MouthFrameSource(manifest, size=64)
    source.clip_frames(0)
    assert source.decoded_clips == 1 and source.describe()["source"] == "mp4 (decoded)"
    small = MouthFrameSource(manifest, size=32)
    assert small.clip_frames(0).shape == (29, 32, 32) and small.decoded_clips == 0


def test_stale_shards_are_refused_with_the_fix(lrw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    manifest = _prepared(lrw, out)
    write_mouth_shards(manifest, workers=1, progress=False)
    folder = out / SHARD_FOLDER
    # Same clips (so the same CSV and manifest_id), another mouth crop in manifest.json.
    assert main(["-q", "prepare", "lrw", str(lrw), "--out", str(out), "--mouth-crop", "70,110,112,112"]) == 0
    assert "--mouth-shards" in capsys.readouterr().err  # the CLI warns at once
    recropped = read_manifest(out)
    assert recropped.manifest_id == manifest.manifest_id
    for opener in (MouthShards.open, MouthFrameSource):
        with pytest.raises(ConfigError, match=r"mouth crop \[79, 115, 96, 96\].*\[70, 110, 112, 112\]") as err:
            opener(recropped)
        assert str(folder) in str(err.value) and "avbench prepare lrw PATH --mouth-shards" in str(err.value)

    # A clip the shards lack: the tree gained one after they were written.
    fewer = _prepared(lrw, tmp_path / "fewer")
    write_mouth_shards(fewer, workers=1, progress=False)
    write_clip(lrw / "ABOUT" / "train" / "ABOUT_00003.mp4")
    more = _prepared(lrw, tmp_path / "fewer")
    with pytest.raises(ConfigError, match=r"1 clip\(s\) .* not in the shards, first 'ABOUT/train/ABOUT_00003'"):
        MouthShards.open(more)

    # Every clip there, but the CSV is another one (here: a label edited by hand).
    shutil.rmtree(tmp_path / "fewer" / SHARD_FOLDER)
    write_mouth_shards(more, workers=1, progress=False)
    made_from = more.manifest_id
    table = more.table.copy()
    table.loc[0, "label"] = "OTHER"
    edited = read_manifest(write_manifest(table, tmp_path / "fewer", more.meta))
    with pytest.raises(ConfigError, match=f"made from manifest {made_from}.*now {edited.manifest_id}"):
        MouthShards.open(edited)

    # A truncated shard file.
    manifest = read_manifest(out)
    shutil.rmtree(folder)
    write_mouth_shards(manifest, workers=1, progress=False)
    with open(folder / "frames-00000.u8", "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(ConfigError, match=r"frames-00000\.u8: 1000 bytes, the index says"):
        MouthShards.open(manifest)


def test_cli_writes_the_shards(lrw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    assert main(["-q", "prepare", "lrw", str(lrw), "--out", str(out), "--mouth-shards", "--shard-workers", "1"]) == 0
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if x.startswith("mouth shards:"))
    total = sum(p.stat().st_size for p in (out / SHARD_FOLDER).iterdir())
    assert f"{N_CLIPS} clips, {total} bytes" in line and str(out / SHARD_FOLDER) in line
    manifest = read_manifest(out)
    monkeypatch.setattr(bench.data.video, "read_video_frames", _no_mp4)
    assert MouthFrameSource(manifest).clip_frames(2).shape == (29, 64, 64)
    # Without the flag, a rerun with the same options keeps the shards valid and says nothing.
    assert main(["-q", "prepare", "lrw", str(lrw), "--out", str(out)]) == 0
    assert capsys.readouterr().err == "" and MouthShards.open(read_manifest(out)) is not None


def test_a_failure_mid_write_leaves_no_shards(lrw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = _prepared(lrw, tmp_path / "out")
    real = bench.data.video.read_video_frames
    calls = []

    def dies_at_the_fifth_clip(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # two shards of two clips are complete by then
            raise KeyboardInterrupt("killed mid-write")
        return real(*args, **kwargs)

    monkeypatch.setattr(bench.data.video, "read_video_frames", dies_at_the_fifth_clip)
    with pytest.raises(KeyboardInterrupt):
        write_mouth_shards(manifest, workers=1, progress=False, clips_per_shard=2)
    assert len(calls) == 5
    assert sorted(p.name for p in manifest.root.iterdir()) == ["audio", "manifest.csv", "manifest.json"]
    assert MouthShards.open(manifest) is None
    # A failed rewrite leaves the shards that were there as they were.
    monkeypatch.setattr(bench.data.video, "read_video_frames", real)
    write_mouth_shards(manifest, workers=1, progress=False)
    before = (manifest.root / SHARD_FOLDER / "index.json").read_bytes()
    calls.clear()
    monkeypatch.setattr(bench.data.video, "read_video_frames", dies_at_the_fifth_clip)
    with pytest.raises(KeyboardInterrupt):
        write_mouth_shards(manifest, workers=1, progress=False)
    assert (manifest.root / SHARD_FOLDER / "index.json").read_bytes() == before
    assert MouthShards.open(manifest) is not None
    # The temp folder of a writer that was killed outright (no except clause ran) is cleared next time.
    abandoned = manifest.root / f".{SHARD_FOLDER}.999999999.abc"
    abandoned.mkdir()
    monkeypatch.setattr(bench.data.video, "read_video_frames", real)
    write_mouth_shards(manifest, workers=1, progress=False)
    assert not abandoned.exists()


def test_an_undecodable_clip_names_the_file_and_the_fix(lrw: Path, tmp_path: Path) -> None:
    manifest = _prepared(lrw, tmp_path / "out")
    bad = Path(manifest.table["video_path"].iloc[4])
    bad.write_bytes(garbage_bytes(4000))
    with pytest.raises(VideoError) as err:
        write_mouth_shards(manifest, workers=2, progress=False)
    assert str(bad) in str(err.value) and "--mouth-shards" in str(err.value)
    assert not (manifest.root / SHARD_FOLDER).exists()
    assert [p.name for p in manifest.root.iterdir() if p.name.startswith(".")] == []


def test_the_embedded_corpus_is_rendered_once_into_shards_with_the_same_bytes(tmp_path: Path) -> None:
    """The visual pretext renders an embedded corpus's frames once; batches read from the shards
    equal the rendered ones (frames, counts and the speakers' rest-pose stills), nothing rendered."""
    from bench.data.corpus.build import build_corpus
    from bench.data.corpus.embedded import CorpusConfig

    corpus = build_corpus(CorpusConfig.from_size("small", speakers=8, words=2, renditions=1), out_root=tmp_path,
                          progress=False)
    manifest = corpus.manifest
    rendered = MouthFrameSource(manifest)
    assert not rendered.sharded
    rows, firsts = [0, 5, 11, 3], [0, 4, 10, 24]
    expected = rendered.batch(rows, firsts, 25)
    assert rendered.decoded_clips == len(rows)

    shards = MouthFrameSource(manifest)
    # Since generator version 4 rendering encodes each clip with H.264 (PyAV), in the shard
    # writer's processes as in this one: the bytes must still be the same.
    shards.ensure_shards(progress=False)
    assert shards.sharded and (manifest.root / SHARD_FOLDER / "index.json").is_file()
    got = shards.batch(rows, firsts, 25)
    for a, b in zip(expected, got):
        assert torch.equal(a, b)
    assert shards.decoded_clips == 0
    for row in range(len(manifest.table)):
        assert np.array_equal(MouthShards.open(manifest).frames(row),
                              corpus.frames(manifest.table["clip_id"].iloc[row]))
    again = MouthFrameSource(manifest)  # a later process finds them
    assert again.sharded and "mouth shards" in again.describe()["source"]
