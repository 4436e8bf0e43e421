"""Synthetic speakers and speaking styles of the embedded corpus.

A speaker is a fixed tuple: accent and voice (an espeak variant, or a Flite voice), base pitch,
pitch range, rate, a vocal-tract-length warp (applied by resampling), a face identity for the
rendered mouth and an articulation style (bench.data.corpus.articulation). Pitch, range and rate are on espeak's scales for both engines
(bench.data.corpus.engines maps them onto Flite's controls).
A style is a prosody offset (pitch level and range, rate, loudness). The corpus labels clips with
it as `emotion`, but it is a prosody proxy, not acted emotion.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from bench.data.corpus.articulation import ArticulationStyle
from bench.data.corpus.espeak import ENGLISH_ACCENTS
from bench.data.corpus.flite import FLITE_VOICE_GENDER, FLITE_VOICES
from bench.data.corpus.mouth import FaceIdentity

# Variants that sound like ordinary voices; effect voices (robots, whisper, croak, klatt) are out.
# Also out: victor, f2, f3, f5 and Alicia. Their breath/echo settings make libespeak-ng's output
# differ between fresh processes even with rand() seeded (6 runs each, measured here), which would
# break byte-identical builds. tests/test_corpus.py re-checks every variant listed here.
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "Andy", "Denis", "Lee", "antonio",
                 "michel", "travis", "max", "rob", "robert", "boris", "zac")
FEMALE_VARIANTS = ("f1", "f4", "Andrea", "Annie", "aunty", "belinda", "linda", "steph", "steph2",
                   "steph3", "anika")


@dataclass(frozen=True)
class Style:
    pitch: int        # added to the speaker's espeak pitch (0..100 scale)
    pitch_range: int  # added to the speaker's espeak range
    rate: float       # multiplies the speaker's rate
    gain_db: float    # added to the clip level


STYLES: dict[str, Style] = {
    "neutral": Style(pitch=0, pitch_range=0, rate=1.0, gain_db=0.0),
    "happy": Style(pitch=12, pitch_range=25, rate=1.08, gain_db=2.0),
    "sad": Style(pitch=-10, pitch_range=-25, rate=0.82, gain_db=-5.0),
    "angry": Style(pitch=6, pitch_range=15, rate=1.15, gain_db=5.0),
}


@dataclass(frozen=True)
class Speaker:
    speaker: str
    accent: str
    gender: str
    variant: str
    pitch: int          # espeak pitch parameter, 0..100
    pitch_range: int    # espeak range parameter, 0..100
    rate: int           # words per minute
    vtl_warp: float     # >1 means a shorter vocal tract: formants and pitch scale up
    face: FaceIdentity
    articulation: ArticulationStyle = ArticulationStyle()

    def to_row(self) -> dict:
        row = {k: v for k, v in asdict(self).items() if k not in ("face", "articulation")}
        row.update(self.face.to_dict())
        row.update(self.articulation.to_dict())
        return row


# Flite's voices: the accent each was recorded in, and the vocal-tract warps drawn for its speakers.
# rms's warp starts at 1.0 and goes higher because it ignores f0_shift and is the lowest voice
# (median F0 80-99 Hz); the others are centred on 1.
FLITE_VOICE_ACCENT = {"slt": "en-us", "rms": "en-us", "awb": "en-gb-scotland", "kal16": "en-us"}
FLITE_WARPS = {"slt": (0.96, 1.08), "rms": (1.00, 1.12), "awb": (0.94, 1.06), "kal16": (0.94, 1.06)}


def make_speakers(count: int, seed: int, engine: str = "espeak") -> list[Speaker]:
    """`count` distinct speakers of the engine's voices, half of each gender, each with an
    articulation style. The styles come from their own random stream, so voices and faces are the
    ones drawn before styles existed (generator version 3)."""
    speakers = _flite_speakers(count, seed) if engine == "flite" else _espeak_speakers(count, seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA271]))
    return [replace(s, articulation=ArticulationStyle.sample(rng)) for s in speakers]


def _espeak_speakers(count: int, seed: int) -> list[Speaker]:
    """Accents cycle so every accent has about the same number of speakers."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5BEA]))
    combos_used: set[tuple[str, str]] = set()
    speakers = []
    for i in range(count):
        accent = ENGLISH_ACCENTS[i % len(ENGLISH_ACCENTS)]
        gender = "female" if (i // len(ENGLISH_ACCENTS)) % 2 else "male"
        pool = FEMALE_VARIANTS if gender == "female" else MALE_VARIANTS
        fresh = [v for v in pool if (accent, v) not in combos_used]
        variant = str(rng.choice(fresh if fresh else pool))
        combos_used.add((accent, variant))
        low, high = (0.98, 1.10) if gender == "female" else (0.90, 1.02)
        speakers.append(Speaker(
            speaker=f"spk{i:03d}",
            accent=accent,
            gender=gender,
            variant=variant,
            pitch=int(rng.integers(30, 71)),
            pitch_range=int(rng.integers(30, 81)),
            rate=int(rng.integers(140, 201)),
            # Rounded to 0.005 so the resampling ratio stays a small fraction (fast polyphase).
            vtl_warp=round(float(rng.uniform(low, high)) / 0.005) * 0.005,
            face=FaceIdentity.sample(rng),
        ))
    return speakers


def _flite_speakers(count: int, seed: int) -> list[Speaker]:
    """Genders alternate; the women are all slt (Flite's one female voice), the men cycle through
    rms, awb and kal16. Speakers of one voice differ in warp, pitch and rate, as with espeak."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xF17E]))
    male_voices = [v for v in FLITE_VOICES if FLITE_VOICE_GENDER[v] == "male"]
    speakers = []
    for i in range(count):
        gender = "female" if i % 2 else "male"
        voice = "slt" if gender == "female" else male_voices[(i // 2) % len(male_voices)]
        speakers.append(Speaker(
            speaker=f"spk{i:03d}",
            accent=FLITE_VOICE_ACCENT[voice],
            gender=gender,
            variant=voice,
            pitch=int(rng.integers(30, 71)),
            pitch_range=int(rng.integers(30, 81)),
            rate=int(rng.integers(140, 201)),
            vtl_warp=round(float(rng.uniform(*FLITE_WARPS[voice])) / 0.005) * 0.005,
            face=FaceIdentity.sample(rng),
        ))
    return speakers


def assign_splits(speakers: list[Speaker], fractions: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Speaker-disjoint train/valid/test split, stratified by accent so each split hears every accent.

    Speakers are shuffled within each accent, then dealt round-robin across accents; the first
    n_test dealt go to test, the next n_valid to valid, the rest to train.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B11]))
    by_accent: dict[str, list[str]] = {}
    for s in speakers:
        by_accent.setdefault(s.accent, []).append(s.speaker)
    queues = [[ids[j] for j in rng.permutation(len(ids))] for _, ids in sorted(by_accent.items())]
    dealt: list[str] = []
    while any(queues):
        for queue in queues:
            if queue:
                dealt.append(queue.pop(0))
    n_valid = max(1, int(round(len(speakers) * fractions[1])))
    n_test = max(1, int(round(len(speakers) * fractions[2])))
    return {spk: "test" if pos < n_test else "valid" if pos < n_test + n_valid else "train"
            for pos, spk in enumerate(dealt)}
