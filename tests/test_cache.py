"""bench.data.feature_cache: features round-trip, keys change with every input, partial and damaged entries,
one build for concurrent processes, and features the cache must refuse."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

import bench.data.feature_cache as cache_mod
from bench.data.audio import load_audio
from bench.data.cache_entry import CacheStats, CachedFeatures, CorruptCacheError, FeatureError
from bench.data.feature_cache import FeatureCache, weights_digest
from bench.data.manifest import Manifest, read_manifest, write_manifest
from bench.errors import ConfigError
from bench.registry import Encoder

HOP = 160


class TinyEncoder(Encoder):
    """Framewise linear projection of 10 ms frames: cheap, deterministic, padding-independent.

    `poison` makes it misbehave on purpose ("nan" or "big"); `sleep` slows each batch so a second
    process reliably arrives while the first is still building.
    """

    name = "tiny"
    frame_rate = 100.0
    trainable = True

    def __init__(self, dim: int = 8, seed: int = 0, scale: float = 1.0, poison: str | None = None,
                 sleep: float = 0.0):
        super().__init__()
        self.dim, self.scale, self.poison, self.sleep = dim, scale, poison, sleep
        gen = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Linear(HOP, dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(dim, HOP, generator=gen) / HOP ** 0.5)
            self.proj.bias.copy_(torch.randn(dim, generator=gen) * 0.1)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sleep:
            time.sleep(self.sleep)
        out_lengths = self.output_lengths(lengths)
        frames = int(out_lengths.max())
        padded = torch.nn.functional.pad(wav, (0, frames * HOP - wav.shape[1]))
        feats = self.proj(padded.reshape(wav.shape[0], frames, HOP)) * self.scale
        if self.poison == "nan":
            feats[-1, 0, 0] = float("nan")
        elif self.poison == "big":
            feats[-1, 0, 0] = 1e6
        return feats, out_lengths

    def config(self) -> dict:
        return {**super().config(), "scale": self.scale, "poison": self.poison}


def make_manifest(folder: Path, n: int = 11, drop: int = 0) -> Manifest:
    """`n` noise clips of varied length (one at 8 kHz, to go through resampling), all splits."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        sr = 8_000 if i == 3 else 16_000
        num = int(rng.integers(sr // 5, sr * 3 // 2))
        rel = f"audio/c{i:02d}.wav"
        (folder / "audio").mkdir(parents=True, exist_ok=True)
        sf.write(folder / rel, (rng.standard_normal(num) * 0.1).astype(np.float32), sr, subtype="FLOAT")
        rows.append({"clip_id": f"w{i % 3}/c{i:02d}", "audio_path": rel, "label": f"w{i % 3}",
                     "speaker": f"s{i % 4}", "split": ("train", "valid", "test")[i % 3],
                     "num_samples": num, "sample_rate": sr})
    return read_manifest(write_manifest(pd.DataFrame(rows[drop:]), folder))


def reference(encoder: Encoder, manifest: Manifest, max_seconds: float | None = None) -> list[np.ndarray]:
    """Each clip through the encoder alone, float32: what the cache must hold."""
    out = []
    encoder.eval()
    with torch.inference_mode():
        for path in manifest.table["audio_path"]:
            wav = load_audio(manifest.resolve(path), encoder.sample_rate)
            if max_seconds is not None:
                wav = wav[: round(max_seconds * encoder.sample_rate)]
            feats, lengths = encoder(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
            out.append(feats[0, : int(lengths[0])].numpy())
    return out


def assert_matches(cached: CachedFeatures, expected: list[np.ndarray]) -> None:
    assert len(cached) == len(expected)
    for i, ref in enumerate(expected):
        got = cached.get(i)
        assert got.dtype == np.float16 and got.shape == ref.shape
        np.testing.assert_allclose(got.astype(np.float32), ref, rtol=2e-3, atol=1e-4)


@pytest.fixture()
def manifest(tmp_path: Path) -> Manifest:
    return make_manifest(tmp_path / "corpus")


@pytest.fixture()
def cache(tmp_path: Path) -> FeatureCache:
    return FeatureCache(tmp_path / "cache")


def test_round_trip_order_and_hit(cache: FeatureCache, manifest: Manifest, monkeypatch) -> None:
    # Small windows and shards: several sort windows and several shard files on 11 clips.
    monkeypatch.setattr(cache_mod, "SORT_WINDOW_BATCHES", 2)
    monkeypatch.setattr(cache_mod, "SHARD_BYTES", 3000)
    enc = TinyEncoder()
    enc.train()
    first = cache.get_or_build(enc, manifest, batch_size=3, progress=False)
    assert enc.training, "the encoder's train/eval mode is restored after a build"
    assert first.stats.hit is False and first.stats.forward_clips == len(manifest.table)
    assert first.stats.build_seconds > 0
    assert first.path == cache.root / first.key and first.key == cache.key(enc, manifest)
    assert first.clip_ids == manifest.table["clip_id"].tolist()
    assert first.dim == 8 and first.frame_rate == 100.0
    expected = reference(enc, manifest)
    assert first.lengths.tolist() == [len(r) for r in expected]
    assert_matches(first, expected)

    # The shards are plain row-major float16 in manifest order, readable without bench.data.feature_cache.
    shards = sorted(first.path.glob("shard-*.f16"))
    assert len(shards) > 1
    flat = np.concatenate([np.fromfile(s, dtype=np.float16).reshape(-1, 8) for s in shards])
    np.testing.assert_array_equal(flat, np.concatenate([first.get(i) for i in range(len(first))]))
    meta = json.loads((first.path / "meta.json").read_text())
    assert meta["num_clips"] == 11 and meta["total_frames"] == len(flat) and meta["encoder"] == "tiny"
    assert meta["bytes"] == flat.nbytes and meta["manifest_id"] == manifest.manifest_id

    # Lookup, bounds, writable copies, pickling for DataLoader workers.
    cid = manifest.table["clip_id"].iloc[5]
    assert first.index_of(cid) == 5
    np.testing.assert_array_equal(first.get(-1), first.get(10))
    with pytest.raises(IndexError):
        first.get(11)
    with pytest.raises(KeyError, match="not in feature cache"):
        first.index_of("nope")
    x = first.get(0)
    x[:] = 0  # a fresh buffer: writing to it must not touch the cache
    assert np.abs(first.get(0).astype(np.float32)).sum() > 0
    clone = pickle.loads(pickle.dumps(first))
    np.testing.assert_array_equal(clone.get(4), first.get(4))
    first.close()
    clone.close()

    second = cache.get_or_build(enc, manifest, batch_size=3, progress=False)
    assert second.stats == CacheStats(forward_clips=0, hit=True, build_seconds=0.0)
    assert second.path == first.path
    assert_matches(second, expected)
    assert not list(cache.root.glob(".*partial*"))


def test_keys_follow_every_input(cache: FeatureCache, manifest: Manifest, tmp_path: Path) -> None:
    enc = TinyEncoder()
    base = cache.key(enc, manifest)
    assert cache.key(TinyEncoder(), manifest) == base, "equal inputs, equal keys"
    assert cache.key(enc, manifest, {}) == base
    assert cache.key(enc, manifest, {"sample_rate": 16_000, "max_seconds": None}) == base
    assert cache.key(enc, manifest, {"sample_rate": 16_000.0}) == base

    assert cache.key(TinyEncoder(seed=1), manifest) != base, "new weights"
    nudged = TinyEncoder()
    with torch.no_grad():
        nudged.proj.bias[0] += 1e-6
    assert cache.key(nudged, manifest) != base, "one changed weight"
    assert cache.key(TinyEncoder(scale=2.0), manifest) != base, "new config"
    assert cache.key(enc, manifest, {"max_seconds": 0.5}) != base, "new preprocessing"
    other = make_manifest(tmp_path / "corpus2", drop=1)
    assert cache.key(enc, other) != base, "new manifest"

    with pytest.raises(ConfigError, match="not applied by the feature cache"):
        cache.key(enc, manifest, {"normalize": True})
    with pytest.raises(ConfigError, match="expects 16000 Hz"):
        cache.key(enc, manifest, {"sample_rate": 8000})
    with pytest.raises(ConfigError, match="max_seconds must be a positive number"):
        cache.key(enc, manifest, {"max_seconds": "1"})
    # No parameters and no buffers: a constant digest.
    assert weights_digest(torch.nn.Identity()) == hashlib.sha256().hexdigest()
    assert weights_digest(torch.nn.ReLU()) == weights_digest(torch.nn.Identity())


def _variant(manifest: Manifest, folder: Path, rows) -> Manifest:
    """A task variant of `manifest`: some of its clips, re-split, in another folder, pointing at
    the same audio files by absolute path."""
    table = manifest.table.iloc[rows].copy()
    table["audio_path"] = [str(manifest.resolve(p)) for p in table["audio_path"]]
    table["split"] = ["train", "valid", "test"] * (len(table) // 3) + ["train"] * (len(table) % 3)
    folder.mkdir(parents=True)
    return read_manifest(write_manifest(table.reset_index(drop=True), folder))


def test_a_variant_of_cached_clips_is_copied_not_recomputed(cache: FeatureCache, manifest: Manifest,
                                                            tmp_path: Path, monkeypatch) -> None:
    enc = TinyEncoder()
    donor = cache.get_or_build(enc, manifest, batch_size=4, progress=False)
    variant = _variant(manifest, tmp_path / "variant", [9, 2, 5, 0, 7, 3])
    assert cache.key(enc, variant) != donor.key

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder ran although every clip was cached")

    with monkeypatch.context() as m:
        m.setattr(FeatureCache, "_forward", staticmethod(no_encoder))
        copied = cache.get_or_build(enc, variant, progress=False)
    assert copied.stats.forward_clips == 0 and copied.stats.hit is False
    assert copied.stats.derived_from == donor.key
    assert copied.key == cache.key(enc, variant) and copied.clip_ids == variant.table["clip_id"].tolist()
    assert sorted(copied.clip_ids) == sorted(manifest.table["clip_id"].iloc[[9, 2, 5, 0, 7, 3]])
    for i, clip_id in enumerate(copied.clip_ids):
        np.testing.assert_array_equal(copied.get(i), donor.get(donor.index_of(clip_id)))
    assert_matches(copied, reference(enc, variant))
    meta = json.loads((copied.path / "meta.json").read_text())
    assert meta["derived_from"] == donor.key and meta["manifest_id"] == variant.manifest_id
    assert cache.get_or_build(enc, variant, progress=False).stats.hit is True


@pytest.mark.parametrize("change", ["other weights", "clip not cached", "audio rewritten",
                                    "donor manifest rewritten", "other preprocessing"])
def test_features_are_recomputed_unless_a_donor_provably_holds_them(
        cache: FeatureCache, manifest: Manifest, tmp_path: Path, change: str) -> None:
    enc = TinyEncoder()
    donor = cache.get_or_build(enc, manifest, batch_size=4, progress=False)
    rows, preprocessing = [1, 4, 6], None
    if change == "other weights":
        enc = TinyEncoder(seed=1)
    elif change == "other preprocessing":
        preprocessing = {"max_seconds": 0.5}
    elif change == "audio rewritten":  # same path, new content after the donor was built
        path = manifest.resolve(manifest.table["audio_path"].iloc[4])
        wav, sr = sf.read(path, dtype="float32")
        sf.write(path, wav[::-1].copy(), sr, subtype="FLOAT")
        later = time.time() + 5
        os.utime(path, (later, later))
    elif change == "donor manifest rewritten":  # no longer says which audio the donor encoded
        with open(donor.meta["manifest_path"], "a") as fh:
            fh.write("\n")
    variant_rows = _variant(manifest, tmp_path / "variant", rows)
    if change == "clip not cached":  # one clip the donor never saw, from new audio
        extra = make_manifest(tmp_path / "extra", n=12).table.iloc[[11]].copy()
        extra["audio_path"] = [str(tmp_path / "extra" / p) for p in extra["audio_path"]]
        table = pd.concat([variant_rows.table, extra], ignore_index=True)
        (tmp_path / "variant2").mkdir()
        variant_rows = read_manifest(write_manifest(table, tmp_path / "variant2"))
    built = cache.get_or_build(enc, variant_rows, preprocessing, progress=False)
    assert built.stats.derived_from is None
    assert built.stats.forward_clips == len(variant_rows.table)
    expected = reference(enc, variant_rows, max_seconds=(preprocessing or {}).get("max_seconds"))
    assert_matches(built, expected)


def test_crop_preprocessing(cache: FeatureCache, manifest: Manifest) -> None:
    enc = TinyEncoder()
    cached = cache.get_or_build(enc, manifest, {"max_seconds": 0.5}, batch_size=4, progress=False)
    assert cached.lengths.max() <= 0.5 * 100 + 1
    assert_matches(cached, reference(enc, manifest, max_seconds=0.5))
    assert json.loads((cached.path / "meta.json").read_text())["preprocessing"]["max_seconds"] == 0.5


def test_stale_partial_is_ignored_and_removed(cache: FeatureCache, manifest: Manifest) -> None:
    enc = TinyEncoder()
    key = cache.key(enc, manifest)
    cache.root.mkdir(parents=True)
    # What a build killed mid-way leaves: a dot-folder with half a shard and no meta.
    stale = cache.root / f".{key}.partial-99999-deadbeef"
    stale.mkdir()
    (stale / "shard-00000.f16").write_bytes(b"\0" * 100)
    orphan = cache.root / ".0123abcd.partial-99998-cafe0000"  # another key, nobody building it
    orphan.mkdir()
    cached = cache.get_or_build(enc, manifest, batch_size=4, progress=False)
    assert cached.stats.hit is False
    assert not stale.exists() and not orphan.exists()
    assert_matches(cached, reference(enc, manifest))


def test_damaged_entry_is_refused(cache: FeatureCache, manifest: Manifest) -> None:
    enc = TinyEncoder()
    built = cache.get_or_build(enc, manifest, batch_size=4, progress=False)
    built.close()
    shard = built.path / "shard-00000.f16"
    shard.write_bytes(shard.read_bytes()[:-64])
    with pytest.raises(CorruptCacheError, match="damaged") as info:
        cache.get_or_build(enc, manifest, progress=False)
    assert str(built.path) in str(info.value) and "Delete the folder" in str(info.value)
    (built.path / "meta.json").unlink()
    with pytest.raises(CorruptCacheError, match="meta.json is missing"):
        CachedFeatures.open(built.path)


@pytest.mark.parametrize("poison, message", [("big", "beyond the float16 range"), ("nan", "NaN/Inf")])
def test_bad_features_raise(cache: FeatureCache, manifest: Manifest, poison: str, message: str) -> None:
    enc = TinyEncoder(poison=poison)
    with pytest.raises(FeatureError, match=message) as info:
        cache.get_or_build(enc, manifest, batch_size=4, progress=False)
    assert "'tiny'" in str(info.value) and "clip 'w" in str(info.value)
    assert not cache.entry_path(cache.key(enc, manifest)).exists()
    assert not list(cache.root.glob(".*partial*")), "a failed build removes its partial folder"


def _concurrent_worker(root: str, manifest_path: str, barrier, results) -> None:
    """One contender: build the same key as the other, then report what it did and read."""
    enc = TinyEncoder(sleep=0.05)
    manifest = read_manifest(manifest_path)
    barrier.wait()
    cached = FeatureCache(Path(root)).get_or_build(enc, manifest, batch_size=2, progress=False)
    digest = hashlib.sha256(b"".join(cached.get(i).tobytes() for i in range(len(cached)))).hexdigest()
    results.put((cached.stats.hit, cached.stats.forward_clips, cached.key, digest))


def test_concurrent_processes_build_once(cache: FeatureCache, manifest: Manifest) -> None:
    # The two contenders are this process and one spawned process (a fresh interpreter, its own
    # lock file descriptor): a second spawned child would only add seconds of torch import.
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    child = ctx.Process(target=_concurrent_worker, args=(str(cache.root), str(manifest.path), barrier, results))
    child.start()
    try:
        _concurrent_worker(str(cache.root), str(manifest.path), barrier, results)
        outcomes = [results.get(timeout=120) for _ in range(2)]
    finally:
        child.join(timeout=60)
    assert child.exitcode == 0
    assert sorted(o[0] for o in outcomes) == [False, True], "exactly one process builds"
    assert sorted(o[1] for o in outcomes) == [0, len(manifest.table)]
    assert len({o[2:] for o in outcomes}) == 1, "both read the same key and the same features"
    assert [p.name for p in cache.root.iterdir() if not p.name.endswith(".lock")] == [outcomes[0][2]]


@pytest.mark.slow
def test_real_corpus_round_trip(tmp_path: Path) -> None:
    from bench.data.corpus.build import build_corpus
    from bench.data.corpus.embedded import CorpusConfig
    from bench.registry import create_encoder, list_encoders

    corpus = build_corpus(CorpusConfig.from_size("small", speakers=4, words=3, renditions=1),
                          out_root=tmp_path / "corpora", progress=False)
    encoders: list[Encoder] = [TinyEncoder()]
    try:
        if "mfcc39" in list_encoders():
            encoders.append(create_encoder("mfcc39"))
    except ImportError:  # the spectral baselines are not in this checkout yet
        pass
    cache = FeatureCache(tmp_path / "cache")
    for enc in encoders:
        cached = cache.get_or_build(enc, corpus.manifest, batch_size=5, progress=False)
        assert cached.stats.forward_clips == len(corpus.manifest.table) == 12
        assert cached.dim == enc.dim
        assert_matches(cached, reference(enc, corpus.manifest))
        assert cache.get_or_build(enc, corpus.manifest, progress=False).stats.hit
