"""How each synthetic speaker moves their mouth: articulation that varies like people's does.

Up to generator version 3 the mouth track was a noise-free function of the phoneme sequence: every
speaker made the same gestures, exactly in time with the audio, so a small recurrent net read the
word off the tracks of unseen speakers 99.9% of the time. Real lip reading is much harder, mostly
because people differ in how much and how they move their lips, and the video is never exactly in
step with the sound. Version 4 draws, per speaker, an `ArticulationStyle`:

  gain           excursion around the rest pose: hypo-articulated (< 1, mumbled, small mouth
                 movements) to hyper-articulated (> 1) speech, log-uniform in 0.6-1.3. Talkers'
                 visual intelligibility differs widely (Kricos & Lesner 1982); the range is ours.
  spread_bias    habitual lip spreading (+) or rounding (-) while speaking.
  rounding_gain  how much the talker rounds and protrudes for rounded vowels and /w r ʃ/.
  jaw_share      how much of the opening is jaw (lower lip and lower teeth drop) versus lips (both
                 lips part symmetrically). The renderer reads it (bench.data.corpus.camera).
  smoothing_s    coarticulation: the sd of the Gaussian the targets are smoothed with (20-50 ms).
                 Fixed in seconds, so a faster clip's shorter phones overlap more (target undershoot
                 at fast rates, Lindblom 1963).
  anticipation_s anticipatory lip rounding: protrusion begins this long before a rounded vowel, over
                 the preceding consonants, 40-150 ms here. Rounding reaches back over as many as four
                 consonants before /u/ (Daniloff & Moll 1968), in French from the first of a
                 cluster of four to six (Benguerel & Cowan 1974); how far varies with the talker.
  visual_lead_s  the speaker's mean lead of mouth over sound, 0-40 ms. Each clip draws its own offset
                 around it (sd 20 ms), kept in [-40, +120] ms (mouth earlier is positive): inside the
                 window in which listeners still fuse audio and video (-30 ms audio lead to +170 ms
                 audio lag, van Wassenhove, Grant & Poeppel 2007) and the asynchrony broadcast
                 viewers detect (ITU-R BT.1359-1: 45 ms audio early, 125 ms audio late). Mouth
                 movements start 100-300 ms before the voice in natural speech (Chandrasekaran et
                 al. 2009); the tracks' 60 ms pre-speech movement (visemes.py) is that, smaller.
  motor_noise    the sd (0.015-0.05) of per-frame articulatory noise (an AR(1) process at 25 fps, rho 0.6) while
                 the mouth moves, a quarter of it at rest: the same word is never said with quite
                 the same gesture.

Per clip, on top of the speaker's style: the offset, a ±10% excursion jitter, and rate-dependent
undershoot (faster than the speaker's habit: smaller excursions). The clip's draws come from their
own random stream, so the audio of a clip is the same as it was in version 3.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from bench.data.corpus.visemes import REST, VIDEO_FPS, Phone, articulation_keys, frames_from_keys

# The clip offset's bounds (s): mouth at most 40 ms behind and 120 ms ahead of the sound.
OFFSET_RANGE_S = (-0.04, 0.12)
# Words per minute at which a speaker's excursions are as their style says; faster clips undershoot.
REFERENCE_RATE_WPM = 170.0


@dataclass(frozen=True)
class ArticulationStyle:
    gain: float = 1.0
    spread_bias: float = 0.0
    rounding_gain: float = 1.0
    jaw_share: float = 0.5
    smoothing_s: float = 0.025
    anticipation_s: float = 0.0
    visual_lead_s: float = 0.0
    motor_noise: float = 0.0

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "ArticulationStyle":
        return cls(
            # log-uniform: as many talkers at half as at double a given excursion
            gain=float(np.exp(rng.uniform(np.log(0.6), np.log(1.3)))),
            spread_bias=float(rng.uniform(-0.12, 0.12)),
            rounding_gain=float(rng.uniform(0.55, 1.3)),
            jaw_share=float(rng.uniform(0.25, 0.85)),
            smoothing_s=float(rng.uniform(0.02, 0.05)),
            anticipation_s=float(rng.uniform(0.04, 0.15)),
            visual_lead_s=float(rng.uniform(0.0, 0.04)),
            motor_noise=float(rng.uniform(0.015, 0.05)),
        )

    def to_dict(self) -> dict[str, float]:
        return {f"art_{k}": round(v, 6) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, row: dict) -> "ArticulationStyle":
        """From a speakers.csv row; a row without art_ columns (version 3 and before) is the neutral style."""
        return cls(**{k[len("art_"):]: float(v) for k, v in row.items() if k.startswith("art_")})


@dataclass(frozen=True)
class ClipArticulation:
    offset_s: float   # mouth ahead of sound (+) or behind it (-)
    excursion: float  # the clip's gain: style gain x jitter x rate undershoot


def draw_clip(style: ArticulationStyle, rng: np.random.Generator, rate_wpm: float) -> ClipArticulation:
    offset = float(np.clip(style.visual_lead_s + rng.normal(0.0, 0.02), *OFFSET_RANGE_S))
    undershoot = float(np.clip(1.0 - 0.35 * (rate_wpm / REFERENCE_RATE_WPM - 1.0), 0.75, 1.15))
    return ClipArticulation(offset_s=offset, excursion=style.gain * float(rng.uniform(0.9, 1.1)) * undershoot)


def styled_targets(targets: np.ndarray, style: ArticulationStyle, excursion: float) -> np.ndarray:
    """A speaker's version of mouth shapes [K, 3]: scaled around the rest pose, spread or rounded."""
    rest = np.asarray(REST)
    out = rest + excursion * (targets - rest)
    out[:, 1] += style.spread_bias
    out[:, 2] = rest[2] + style.rounding_gain * (out[:, 2] - rest[2]) - 0.5 * min(style.spread_bias, 0.0)
    return np.clip(out, 0.0, 1.0)


def motor_noise(n_frames: int, sd: float, rng: np.random.Generator, rho: float = 0.6) -> np.ndarray:
    """[n_frames, 3] AR(1) noise with stationary sd `sd`: slow wobble rather than per-frame flicker."""
    shocks = rng.normal(0.0, sd * np.sqrt(1.0 - rho ** 2), size=(n_frames, 3))
    noise = np.empty_like(shocks)
    state = rng.normal(0.0, sd, size=3)
    for k in range(n_frames):
        state = rho * state + shocks[k]
        noise[k] = state
    return noise


def speaker_track(phonemes: list[Phone], duration_s: float, style: ArticulationStyle,
                  rng: np.random.Generator, rate_wpm: float, fps: int = VIDEO_FPS) -> tuple[np.ndarray, ClipArticulation]:
    """The [T, 3] track of one clip as this speaker articulates it, and the clip's draws.

    `phonemes` are timed on the audio; the gestures are moved `offset_s` earlier.
    """
    clip = draw_clip(style, rng, rate_wpm)
    shifted = [(p[0], p[1] - clip.offset_s, p[2] - clip.offset_s, *p[3:]) for p in phonemes]
    times, targets = articulation_keys(shifted)
    if len(times):
        # The talker's shapes from the first key to the last (60 ms around the sound); before and
        # after them the common rest pose, the one the identity still shows.
        targets = styled_targets(targets, style, clip.excursion)
    track = frames_from_keys(times, targets, duration_s, fps=fps, smoothing_s=style.smoothing_s,
                             advance_s=(0.0, 0.0, style.anticipation_s))
    # A mouth at rest barely moves; noise grows with the gesture (motor variability scales with
    # movement amplitude), so silence stays still and the mouth-energy correlation holds.
    moving = np.clip(np.abs(track - np.asarray(REST, dtype=np.float32)).max(axis=1, keepdims=True) / 0.2, 0.0, 1.0)
    track = track + motor_noise(len(track), style.motor_noise, rng) * (0.25 + 0.75 * moving)
    return np.clip(track, 0.0, 1.0).astype(np.float32), clip
