"""CMU Flite as a second voice engine (bench.data.corpus.flite). `.ci/run` installs libflite from
Debian's packages, so these run in CI; elsewhere they skip, naming the package to install."""

from __future__ import annotations

import numpy as np
import pytest

from bench.data.corpus import flite
from bench.data.corpus.embedded import SPEECH_COMMANDS_WORDS
from bench.data.corpus.visemes import split_phoneme

pytestmark = pytest.mark.skipif(not flite.available(), reason=f"libflite is not installed: {flite.INSTALL_HINT}")


@pytest.fixture(scope="module")
def synth():
    return flite.FliteSynthesizer()


@pytest.mark.parametrize("voice", flite.FLITE_VOICES)
def test_every_word_of_every_voice_has_timed_phones_that_map_to_visemes(synth, voice):
    synth.set_voice(voice)
    synth.set_prosody()
    for word in SPEECH_COMMANDS_WORDS:
        utt = synth.synth(word)
        assert utt.sample_rate == 16_000 and 0.2 < len(utt.audio) / utt.sample_rate < 2.0, (voice, word)
        starts = [p.sample for p in utt.phonemes]
        assert starts == sorted(starts) and 0 <= starts[0] and starts[-1] < len(utt.audio), (voice, word)
        for phone in utt.phonemes:
            split_phoneme(phone.symbol)  # raises for a phone the viseme table lacks


def test_the_same_call_gives_the_same_samples_and_another_seed_other_noise(synth):
    synth.set_voice("slt")
    synth.set_prosody()
    a, b = synth.synth("house", noise_seed=3).audio, synth.synth("house", noise_seed=3).audio
    c = synth.synth("house", noise_seed=4).audio
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_prosody_stretches_duration_and_shifts_pitch(synth):
    import librosa

    synth.set_voice("slt")
    synth.set_prosody()
    plain = synth.synth("seven")
    synth.set_prosody(f0_shift=1.3, duration_stretch=1.4)
    changed = synth.synth("seven")
    synth.set_prosody()
    assert len(changed.audio) / len(plain.audio) == pytest.approx(1.4, abs=0.15)
    f0 = [np.nanmedian(np.where(v, f, np.nan)) for f, v, _ in
          (librosa.pyin(u.audio, fmin=60, fmax=400, sr=16_000) for u in (plain, changed))]
    assert f0[1] / f0[0] == pytest.approx(1.3, abs=0.1)


def test_an_unknown_voice_is_refused_by_name(synth):
    with pytest.raises(flite.FliteError, match="unknown Flite voice 'kal8'.*slt"):
        synth.set_voice("kal8")


def test_phones_carry_the_lexicons_stress(synth):
    synth.set_voice("rms")
    synth.set_prosody()
    phones = synth.synth("marvin").phonemes
    assert [p.symbol for p in phones] == ["m", "ɑ", "ɹ", "v", "ɪ", "n"]
    assert [p.stress for p in phones] == ["ˈ", "ˈ", "ˈ", "", "", ""]  # MAR-vin: the first syllable


# The second corpus, built with Flite (bench.data.corpus.embedded.PRESETS["flite"]).
TINY = dict(speakers=4, words=3, renditions=1)


def test_the_flite_preset_is_another_dataset_with_the_same_words():
    from bench.data.corpus.embedded import CorpusConfig

    espeak, other = CorpusConfig.from_size("small"), CorpusConfig.from_spec("embedded-flite:small")
    assert (other.engine, other.channels, other.seed) == ("flite", "mobile", 1)
    assert (espeak.engine, espeak.channels, espeak.seed) == ("espeak", "default", 0)
    assert other.word_list == espeak.word_list and other.speakers == espeak.speakers
    assert other.corpus_id != espeak.corpus_id
    assert CorpusConfig.from_spec("embedded:small") == espeak == CorpusConfig.from_spec("small")


def test_a_flite_corpus_is_byte_identical_whatever_the_workers(tmp_path):
    import hashlib

    from bench.data.corpus.build import build_corpus
    from bench.data.corpus.embedded import CorpusConfig

    config = CorpusConfig.from_size("small", preset="flite", **TINY)
    built = [build_corpus(config, out_root=tmp_path / str(w), workers=w, progress=False) for w in (1, 2)]
    digests = [{str(p.relative_to(c.path)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(c.path.rglob("*")) if p.suffix in {".wav", ".npy", ".csv"}} for c in built]
    assert len(digests[0]) == 2 * 12 + 4 + 2 and digests[0] == digests[1]
    speakers = built[0].speakers
    assert set(speakers["variant"]) <= set(flite.FLITE_VOICES)
    assert (speakers[speakers["gender"] == "female"]["variant"] == "slt").all()
    table = built[0].manifest.table
    assert "channel" in table and table["channel"].notna().all()
