"""The realism report: LTASS and F0 against published values (bench.data.corpus.realism)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from bench.data.corpus.realism import (BYRNE_1994_LTASS_DB, F0_NORMS_HZ, LTASS_CENTRES_HZ, CleanClip, band_edges,
                                       clip_items, f0_deviation, long_term_power_spectrum,
                                       ltass_deviation, realism_report, third_octave_levels, usable_bands)

SR = 16_000


def _shaped_noise(band_levels_db: dict[int, float], seconds: float, seed: int) -> np.ndarray:
    """Noise whose 1/3-octave band powers follow `band_levels_db` (flat within each band)."""
    n = int(seconds * SR)
    freqs = np.fft.rfftfreq(n, 1 / SR)
    gain = np.zeros_like(freqs)
    for centre, level in band_levels_db.items():
        lo, hi = band_edges(centre)
        in_band = (freqs >= lo) & (freqs < hi)
        gain[in_band] = np.sqrt(10 ** (level / 10) / in_band.sum())
    rng = np.random.default_rng(seed)
    spectrum = gain * np.exp(2j * np.pi * rng.random(len(freqs)))
    wav = np.fft.irfft(spectrum, n)
    return (0.1 * wav / np.abs(wav).max()).astype(np.float32)


def test_only_bands_below_nyquist_are_compared():
    assert usable_bands(16_000)[-1] == 6300 and usable_bands(16_000)[0] == 100
    assert band_edges(6300)[1] <= 8000 < band_edges(8000)[1]
    assert len(LTASS_CENTRES_HZ) == len(BYRNE_1994_LTASS_DB) == 25


def test_speech_shaped_noise_matches_the_published_ltass_and_white_noise_does_not():
    byrne = dict(zip(LTASS_CENTRES_HZ, BYRNE_1994_LTASS_DB))
    shaped = [_shaped_noise({c: byrne[c] for c in usable_bands(SR)}, 2.0, seed) for seed in range(3)]
    bands = ltass_deviation(third_octave_levels(long_term_power_spectrum(shaped)[0], SR))
    assert [b.centre_hz for b in bands] == usable_bands(SR)
    # Window leakage blurs the band edges a little; every band still lands within 1 dB.
    assert max(abs(b.deviation_db) for b in bands) < 1.0, [(b.centre_hz, b.deviation_db) for b in bands]
    white = [np.random.default_rng(seed).standard_normal(2 * SR).astype(np.float32) for seed in range(3)]
    flat = {b.centre_hz: b for b in ltass_deviation(third_octave_levels(long_term_power_spectrum(white)[0], SR))}
    # White noise has equal power per Hz: its 1/3-octave bands rise 1 dB per band, so its low bands
    # sit far below speech's and its high bands far above.
    assert flat[125].deviation_db < -10 and flat[6300].deviation_db > 15


def _harmonic(f0: float, seconds: float = 0.6) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6)).astype(np.float32) * 0.1


def test_f0_per_gender_is_measured_and_compared_in_semitones():
    clips = [CleanClip("male", _harmonic(120.0)), CleanClip("male", _harmonic(120.0 * 2 ** (1 / 12))),
             CleanClip("female", _harmonic(210.0)), CleanClip("female", np.zeros(SR // 2, dtype=np.float32))]
    rows = {r.gender: r for r in f0_deviation(clips, SR)}
    te = "Traunmuller & Eriksson 1995 (typical, running speech)"
    assert rows["male"].clips == 2 and rows["male"].voiced_clips == 2
    assert rows["male"].mean_hz == pytest.approx(123.6, abs=2.0)
    assert rows["male"].deviation_semitones[te] == pytest.approx(0.5, abs=0.3)
    # The silent clip has no voiced frame: counted, not measured, not silently dropped.
    assert (rows["female"].clips, rows["female"].voiced_clips) == (2, 1)
    assert rows["female"].mean_hz == pytest.approx(210.0, abs=3.0)
    assert rows["female"].published == {s: n["female"] for s, n in F0_NORMS_HZ.items()}


@pytest.mark.slow
def test_clean_speech_is_the_speech_inside_the_corpus_clip(small_corpus):
    """The re-synthesised dry speech is the utterance the build mixed (same word, voice and prosody):
    in the cleanest stored clips (high SNR, no room) it has the recorded speech span's length and
    its log-mel spectrogram matches the clip's at the recorded start (better than another utterance's).
    libespeak-ng's samples drift with its process's history, so equal samples cannot be asked for."""
    table = small_corpus.manifest.table
    clean_rows = table[(table["reverb_rt60"] == 0) & (table["snr_db"] > 25) & ~table["trimmed"]
                       & (table["channel"] == "clean")].head(4)
    assert len(clean_rows) == 4
    config = small_corpus.config
    from bench.data.corpus.build import render_clean

    rendered = render_clean((config, clip_items(config, clean_rows)))
    for (gender, speech, word, phones), row in zip(rendered, clean_rows.itertuples()):
        assert gender == row.gender and word == row.label and phones
        clip, sr = sf.read(small_corpus.manifest.resolve(row.audio_path), dtype="float32")
        assert abs(len(speech) / sr - (row.end - row.start)) < 0.005, row.clip_id
        start = int(round(row.start * sr))
        same = _log_mel_correlation(clip[start: start + len(speech)], speech)
        assert same > 0.9, (row.clip_id, same)
        other = next(w for _, w, _, _ in rendered if w is not speech)  # another utterance, as a control
        n = min(len(other), len(speech))
        assert _log_mel_correlation(clip[start: start + n], other[:n]) < same - 0.05, row.clip_id


def _log_mel_correlation(a: np.ndarray, b: np.ndarray) -> float:
    import librosa

    mel = [np.log(librosa.feature.melspectrogram(y=x, sr=SR, n_fft=400, hop_length=160, n_mels=40) + 1e-8)
           for x in (a, b)]
    return float(np.corrcoef(mel[0].ravel(), mel[1].ravel())[0, 1])


@pytest.mark.slow
def test_corpus_check_prints_the_realism_report_and_keeps_it_in_the_manifest(small_corpus, capsys):
    from bench.cli import main

    csv_before = (small_corpus.path / "manifest.csv").read_bytes()
    assert main(["corpus", "check", str(small_corpus.path), "--max-clips", "50", "--realism-clips", "24",
                 "--lipreading-clips", "0"]) == 0
    out = capsys.readouterr().out
    assert "Byrne et al. 1994" in out and "RMS deviation over 19 bands" in out
    assert "male:" in out and "female:" in out
    assert "Hillenbrand et al. 1995" in out and "whole word, male:" in out
    meta = json.loads((small_corpus.path / "manifest.json").read_text())
    assert meta["realism"]["clips"] == 24 and len(meta["realism"]["ltass"]) == 19
    assert meta["realism"]["word_timing"] and meta["realism"]["vowel_duration_reference"].startswith("Hillenbrand")
    assert (small_corpus.path / "manifest.csv").read_bytes() == csv_before  # the manifest id stands
    assert main(["corpus", "compare", str(small_corpus.path), "small"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| figure | published | ") and len(table) == 2 + 19 + 1 + 2 + 1 + 2
    assert table[2].startswith("| LTASS 100 Hz: corpus - published | +0.7 dB re 1 kHz | ")
    assert "| F0 male: mean of clip medians | 132 Hz" in "\n".join(table)


def test_corpus_compare_names_the_corpus_that_was_never_checked(tmp_path, capsys):
    from bench.cli import main
    from bench.data.corpus.build import build_corpus
    from bench.data.corpus.embedded import CorpusConfig

    corpus = build_corpus(CorpusConfig.from_size("small", speakers=4, words=2, renditions=1), out_root=tmp_path,
                          progress=False)
    assert main(["corpus", "compare", str(corpus.path)]) == 2
    assert f"{corpus.path / 'manifest.json'} has no realism figures: run `avbench corpus check" in capsys.readouterr().err


def test_report_of_given_clips_has_both_parts():
    byrne = dict(zip(LTASS_CENTRES_HZ, BYRNE_1994_LTASS_DB))
    clips = [CleanClip("male", _shaped_noise({c: byrne[c] for c in usable_bands(SR)}, 1.0, 0) + _harmonic(120.0, 1.0))]
    report = realism_report(clips, SR).to_dict()
    assert report["clips"] == 1 and len(report["ltass"]) == 19 and report["f0"][0]["gender"] == "male"


def _clip(gender: str, word: str, vowel_ms: float, word_ms: float = 500.0) -> CleanClip:
    """A clip whose phones are consonant, vowel (two phones, a diphthong), consonant."""
    v = vowel_ms / 1000
    phones = [("b", 0.0, 0.05, ""), ("o", 0.05, 0.05 + v / 2, "ˈ"), ("ʊ", 0.05 + v / 2, 0.05 + v, ""),
              ("d", 0.05 + v, 0.1 + v, "")]
    return CleanClip(gender, np.zeros(int(word_ms / 1000 * SR), dtype=np.float32), word, phones)


def test_vowel_durations_are_compared_with_the_hvd_vowel_of_the_same_quality():
    from bench.data.corpus.timing import HILLENBRAND_1995_VOWEL_MS, mean_ratio, vowel_durations, word_timings

    heed_m, hoed_f = HILLENBRAND_1995_VOWEL_MS["heed"]["male"], HILLENBRAND_1995_VOWEL_MS["hoed"]["female"]
    clips = [_clip("male", "three", heed_m), _clip("male", "tree", heed_m * 0.5),
             _clip("female", "no", hoed_f * 2), _clip("female", "go", hoed_f * 2),
             _clip("male", "yes", 90.0)]  # yes: its vowel precedes /s/, so it is not compared
    rows = {(r.word, r.gender): r for r in vowel_durations(clips)}
    assert set(rows) == {("heed", "male"), ("hoed", "female")}
    assert rows["heed", "male"].clips == 2 and rows["heed", "male"].ratio == pytest.approx(0.75, abs=1e-3)
    assert rows["hoed", "female"].ratio == pytest.approx(2.0, abs=1e-3)  # both phones of the diphthong count
    assert mean_ratio(list(rows.values())) == pytest.approx(np.exp((2 * np.log(0.75) + 2 * np.log(2.0)) / 4), abs=1e-3)
    timing = {w.gender: w for w in word_timings(clips + [_clip("female", "happy", 100.0, word_ms=400.0)], SR)}
    assert timing["male"].clips == 3 and timing["male"].word_ms_mean == pytest.approx(500.0)
    assert timing["female"].syllables_per_s == pytest.approx((1 + 1 + 2) / 1.4, abs=0.01)  # happy has 2
