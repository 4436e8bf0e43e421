"""Recording channels (bench.data.corpus.channels): each stage does what it claims, keeps the clip's
length and alignment, and the mix draws each family at its stated share."""

from __future__ import annotations

import numpy as np
import pytest

from bench.data.corpus.channels import (CODECS, MICROPHONES, Channel, ChannelMix, apply_channel,
                                        automatic_gain, codec_round_trip, draw_channel, microphone_response,
                                        telephone)
from bench.errors import ConfigError

SR = 16_000


def _tone(hz: float, seconds: float = 1.0, level: float = 0.1) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return level * np.sin(2 * np.pi * hz * t)


def _level_db(wav: np.ndarray) -> float:
    core = wav[len(wav) // 4: -len(wav) // 4]  # away from the filters' start-up
    return 10 * np.log10(np.mean(core ** 2) + 1e-20)


def _speechlike(seed: int = 0) -> np.ndarray:
    """A burst of harmonic, amplitude-modulated sound between 0.3 and 0.7 s."""
    t = np.arange(SR) / SR
    rng = np.random.default_rng(seed)
    wav = sum(np.sin(2 * np.pi * k * 140 * t + rng.uniform(0, 6)) / k for k in range(1, 20))
    wav *= (t > 0.3) & (t < 0.7)
    return 0.2 * wav * (1 + 0.5 * np.sin(2 * np.pi * 4 * t))


def test_a_laptop_microphone_cuts_the_lows_and_keeps_the_mids():
    laptop = MICROPHONES["laptop"]
    low = _level_db(microphone_response(_tone(80), laptop)) - _level_db(_tone(80))
    mid = _level_db(microphone_response(_tone(1000), laptop)) - _level_db(_tone(1000))
    assert low < -15 and abs(mid) < 2


def test_the_telephone_band_removes_what_lies_outside_300_3400_hz():
    for hz, inside in [(150, False), (1000, True), (3000, True), (5000, False)]:
        change = _level_db(telephone(_tone(hz))) - _level_db(_tone(hz))
        assert (abs(change) < 3) if inside else (change < -20), (hz, change)


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_every_codec_round_trip_keeps_length_alignment_and_resemblance(codec):
    rate = CODECS[codec][2]
    wav = _speechlike()
    if rate != SR:
        out = telephone(wav, codec, CODECS[codec][3][0])
    else:
        out = codec_round_trip(wav, codec, CODECS[codec][3][0])
    assert len(out) == len(wav)
    # Aligned: correlation is highest at lag 0 (within a sample), so manifest speech spans hold.
    lags = range(-8, 9)
    scores = [np.dot(np.roll(out, -lag), wav) for lag in lags]
    assert abs(lags[int(np.argmax(scores))]) <= 1, codec
    reference = telephone(wav) if rate != SR else wav
    assert np.corrcoef(out, reference)[0, 1] > 0.8, codec
    assert not np.allclose(out, reference, atol=1e-4), codec  # the codec did change the signal


def test_an_unknown_codec_is_refused_by_name():
    with pytest.raises(ConfigError, match="unknown codec 'flac'.*mp3"):
        codec_round_trip(_tone(440), "flac")


def test_automatic_gain_raises_a_quiet_clip_towards_the_target_and_clipping_bounds_it():
    quiet = _tone(500, level=0.01)  # -43 dBFS RMS: 23 dB below the target
    raised = automatic_gain(quiet, target_dbfs=-20.0, max_gain_db=30.0)
    assert _level_db(raised) == pytest.approx(-20.0, abs=1.5)
    clipped = apply_channel(_tone(500, level=0.9), Channel(agc=False, clip_level=0.4))
    assert np.abs(clipped).max() == pytest.approx(0.4, abs=1e-6)


def test_channels_are_deterministic_and_named():
    wav = _speechlike(1)
    a = apply_channel(wav, draw_channel(np.random.default_rng(7)))
    b = apply_channel(wav, draw_channel(np.random.default_rng(7)))
    assert a.dtype == np.float32 and np.array_equal(a, b)
    assert Channel().name == "clean"
    assert Channel(microphone="laptop", codec="opus", bit_rate=12_000).name == "laptop+opus-12k"
    assert Channel(telephone=True, codec="amr-nb", bit_rate=7_950, dc_offset=0.01).name == "telephone+amr-nb-7.95k+dc"


def test_the_mix_draws_each_family_at_its_share():
    rng = np.random.default_rng(0)
    channels = [draw_channel(rng) for _ in range(4000)]
    mix = ChannelMix()
    share = lambda pred: sum(map(pred, channels)) / len(channels)  # noqa: E731
    assert share(lambda c: c.name == "clean") == pytest.approx(mix.clean, abs=0.025)
    assert share(lambda c: c.telephone) == pytest.approx(mix.telephone, abs=0.02)
    assert share(lambda c: c.agc) == pytest.approx(mix.microphone_agc, abs=0.02)
    assert share(lambda c: c.codec in ("mp3", "opus", "aac")) == pytest.approx(mix.microphone_codec, abs=0.025)
    with pytest.raises(ConfigError, match="sum to 1"):
        draw_channel(rng, ChannelMix(clean=0.5))


def test_a_corpus_built_with_channels_names_each_clips_channel(tmp_path, capsys):
    from bench.cli import main
    from bench.data.corpus.build import build_corpus
    from bench.data.corpus.embedded import CorpusConfig

    tiny = dict(speakers=8, words=3, renditions=2)
    plain = CorpusConfig.from_size("small", channels="none", **tiny)
    with_channels = CorpusConfig.from_size("small", channels="default", **tiny)
    assert CorpusConfig.from_size("small", **tiny) == with_channels  # channels are on by default
    assert with_channels.corpus_id != plain.corpus_id
    with pytest.raises(ConfigError, match="unknown channel mix 'radio'"):
        CorpusConfig.from_size("small", channels="radio", **tiny)
    assert main(["--quiet", "corpus", "build", "--size", "small", "--speakers", "8", "--words", "3", "--renditions", "2",
                 "--channels", "default", "--workers", "1", "--out", str(tmp_path)]) == 0
    assert "channel:  mix default: clean" in capsys.readouterr().out
    corpus = build_corpus(with_channels, out_root=tmp_path, progress=False)  # reused, not rebuilt
    table = corpus.manifest.table
    assert table["channel"].notna().all() and (table["channel"] != "clean").any()
    assert corpus.config.channels == "default"
