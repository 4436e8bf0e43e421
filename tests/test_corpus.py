"""The embedded corpus: synthesis, phoneme coverage, splits, determinism, mouth track, rendering."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from bench.data.corpus.build import build_corpus
from bench.data.corpus.checks import mouth_audio_correlation, nearest_centroid_accuracy
from bench.data.corpus.embedded import SPEECH_COMMANDS_WORDS, CorpusConfig, corpus_path, find_corpus
from bench.data.corpus.espeak import ENGLISH_ACCENTS, EspeakError
from bench.data.corpus.mouth import FaceIdentity, identity_frame, render_frames
from bench.data.corpus.speakers import FEMALE_VARIANTS, MALE_VARIANTS
from bench.data.corpus.visemes import UnmappedPhonemeError, articulation_track, split_phoneme
from bench.data.manifest import ManifestError
from bench.errors import ConfigError

TINY = dict(speakers=4, words=3, renditions=1)


@pytest.fixture(scope="module")
def synth():
    # libespeak-ng keeps global state: one instance for the whole test process.
    from bench.data.corpus import engines

    engines.start("espeak")
    return engines._SYNTH


def test_every_phoneme_of_every_accent_has_a_viseme(synth):
    seen = set()
    for accent in ENGLISH_ACCENTS:
        for rate in (120, 240):  # reductions differ with speaking rate
            synth.set_voice(accent)
            synth.set_prosody(rate=rate, pitch=50, pitch_range=50)
            for word in SPEECH_COMMANDS_WORDS:
                for phoneme in synth.synth(word).phonemes:
                    seen.add(phoneme.symbol)
                    split_phoneme(phoneme.symbol)  # raises UnmappedPhonemeError if unmapped
    assert "ɡ" in seen, "espeak writes U+0261 for g; the table must map it"
    assert not any(c in s for s in seen for c in "ˈˌ"), "stress marks must be stripped"


def test_unmapped_phoneme_raises_naming_it():
    with pytest.raises(UnmappedPhonemeError, match="ǂ"):
        split_phoneme("aǂ")


def test_every_voice_variant_loads_and_unknown_variant_is_refused(synth):
    for variant in MALE_VARIANTS + FEMALE_VARIANTS:
        synth.set_voice("en", variant)
    with pytest.raises(EspeakError, match="unknown espeak variant"):
        synth.set_voice("en", "no-such-variant")


def test_small_corpus_layout_and_splits(small_corpus):
    t = small_corpus.manifest.table
    assert len(t) == 20 * 30 * 1
    assert set(t["label"]) == set(SPEECH_COMMANDS_WORDS)
    by_speaker = t.groupby("speaker")["split"].nunique()
    assert (by_speaker == 1).all(), "a speaker appears in two splits"
    assert t.groupby("split")["speaker"].nunique().to_dict() == {"train": 16, "valid": 2, "test": 2}
    assert (t["num_samples"] == 16000).all() and (t["sample_rate"] == 16000).all()
    assert set(t["emotion"]) == {"neutral", "happy", "sad", "angry"}
    for rel in small_corpus.manifest.meta["noise_sources"]:
        assert small_corpus.manifest.resolve(rel).is_file()
    # Noise-bank files are kept aside: no clip is one of them.
    assert not set(small_corpus.manifest.meta["noise_sources"]) & set(t["audio_path"])


def test_mouth_track_follows_the_audio(small_corpus):
    corr = mouth_audio_correlation(small_corpus)
    assert corr.all_frames >= 0.6, corr
    assert corr.speech_frames >= 0.3, corr


def test_words_are_distinct_for_a_nearest_centroid_classifier(small_corpus):
    # 16 training speakers x 1 rendition: chance is 1/30. The default corpus scores higher.
    assert nearest_centroid_accuracy(small_corpus, speech_only=True) > 3 / 30


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in {".wav", ".npy", ".csv"}}


def test_same_config_gives_byte_identical_files_whatever_the_workers(tmp_path):
    config = CorpusConfig.from_size("small", **TINY)
    a = build_corpus(config, out_root=tmp_path / "a", workers=1, progress=False)
    b = build_corpus(config, out_root=tmp_path / "b", workers=2, progress=False)
    digest_a, digest_b = _tree_digest(a.path), _tree_digest(b.path)
    assert len(digest_a) == 2 * 12 + 4 + 2  # wav + npy per clip, 4 noise wavs, 2 CSVs
    assert digest_a == digest_b


def test_changed_parameter_gives_new_corpus_id(tmp_path):
    base = CorpusConfig.from_size("small", **TINY)
    assert CorpusConfig.from_size("small", **TINY).corpus_id == base.corpus_id
    for change in ({"seed": 1}, {"renditions": 2}, {"reverb_prob": 0.5}):
        assert CorpusConfig.from_size("small", **{**TINY, **change}).corpus_id != base.corpus_id


def test_rebuild_reuses_a_finished_corpus_and_ignores_partial_builds(tmp_path):
    config = CorpusConfig.from_size("small", **TINY)
    first = build_corpus(config, out_root=tmp_path, progress=False)
    stamp = (first.path / "manifest.csv").stat().st_mtime_ns
    again = build_corpus(config, out_root=tmp_path, progress=False)
    assert (again.path / "manifest.csv").stat().st_mtime_ns == stamp
    # A killed build leaves only a hidden .partial folder, which is never taken for a corpus.
    other = CorpusConfig.from_size("small", **{**TINY, "seed": 7})
    partial = tmp_path / f".{corpus_path(other, tmp_path).name}.partial-123"
    (partial / "audio").mkdir(parents=True)
    with pytest.raises(ManifestError, match="no embedded corpus here"):
        find_corpus(corpus_path(other, tmp_path))


def test_bad_corpus_parameters_are_refused_by_name():
    with pytest.raises(ConfigError, match="words must be in 1..30"):
        CorpusConfig.from_size("small", words=31)
    with pytest.raises(ConfigError, match="unknown corpus size"):
        CorpusConfig.from_size("huge")


def test_frames_render_from_track_and_identity_differs_by_speaker(small_corpus):
    clip = small_corpus.manifest.table.iloc[0]
    frames = small_corpus.frames(clip["clip_id"])
    assert frames.shape == (25, 64, 64) and frames.dtype == np.uint8
    track = small_corpus.track(clip["clip_id"])
    open_frame, closed_frame = int(np.argmax(track[:, 0])), int(np.argmin(track[:, 0]))
    # An open mouth shows a dark cavity: fewer bright pixels' mean in the mouth centre.
    centre = (slice(24, 48), slice(20, 44))
    assert frames[open_frame][centre].min() < frames[closed_frame][centre].min()
    ids = {s: small_corpus.identity_frame(s) for s in small_corpus.manifest.speakers[:3]}
    a, b, c = ids.values()
    assert not np.array_equal(a, b) and not np.array_equal(b, c)


def test_articulation_track_closes_for_bilabials_and_opens_for_open_vowels():
    track = articulation_track([("m", 0.2, 0.4), ("ɑː", 0.4, 0.7), ("p", 0.7, 0.8)], 1.0)
    assert track.shape == (25, 3)
    assert track[14, 0] > 0.7 and track[2, 0] < 0.05 and track[24, 0] < 0.05
    frames = render_frames(track, FaceIdentity())
    assert frames.shape == (25, 64, 64)
    assert identity_frame(FaceIdentity()).shape == (64, 64)


def test_cli_corpus_build_prints_the_summary(tmp_path, capsys):
    rc = main(["-q", "corpus", "build", "--size", "small", "--speakers", "4", "--words", "3",
               "--renditions", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    for expected in ("train", "valid", "test", "speakers", "path:", "words:    3"):
        assert expected in out
    assert main(["-q", "corpus", "build", "--words", "0", "--out", str(tmp_path)]) == 2
    assert "words must be in 1..30" in capsys.readouterr().err


_VARIANT_DIGEST = """
import hashlib, json
from bench.data.corpus.espeak import Synthesizer
from bench.data.corpus.speakers import MALE_VARIANTS, FEMALE_VARIANTS
s = Synthesizer(); out = {}
for v in MALE_VARIANTS + FEMALE_VARIANTS:
    s.set_voice("en", v); s.set_prosody(rate=170, pitch=50, pitch_range=50)
    out[v] = hashlib.md5(s.synth("sheila", noise_seed=1).audio.tobytes()).hexdigest()
print(json.dumps(out))
"""


def test_every_voice_variant_in_use_is_reproducible_across_processes():
    # Some espeak variants (breath, echo) differ from process to process; none may be in the pools.
    import json
    import subprocess
    import sys

    runs = [json.loads(subprocess.run([sys.executable, "-c", _VARIANT_DIGEST], capture_output=True, text=True,
                                      check=True).stdout) for _ in range(3)]
    unstable = [v for v in runs[0] if len({r[v] for r in runs}) > 1]
    assert unstable == [], f"variants whose audio differs between processes: {unstable}"


def test_a_flite_build_without_libflite_stops_naming_the_package(tmp_path, monkeypatch, capsys):
    # Runs whether or not libflite is installed here: the libraries are made unfindable.
    from bench.cli import main
    from bench.data.corpus import engines, flite

    monkeypatch.setattr(flite, "_find", lambda name: None)
    engines.engine_digest.cache_clear()
    try:
        code = main(["corpus", "build", "--engine", "flite", "--size", "small", "--out", str(tmp_path)])
    finally:
        engines.engine_digest.cache_clear()
    assert code == 2
    assert "libflite.so.1 not found" in capsys.readouterr().err and "apt-get install flite1-dev" in flite.INSTALL_HINT
    assert not any(tmp_path.iterdir())  # nothing half-built
