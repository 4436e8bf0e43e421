"""Word and vowel durations of a corpus's clean speech, against published isolated-word statistics.

The published reference is the vowel of isolated /hVd/ words (heed, hid, ..., heard) measured by
Hillenbrand, J., Getty, L. A., Clark, M. J. & Wheeler, K. (1995). Acoustic characteristics of
American English vowels. J. Acoust. Soc. Am. 97(5), 3099-3111: 45 men and 48 women of Michigan,
each /hVd/ word read in isolation; mean vowel durations from the authors' summary file of the
data set (vowdata.ds). A vowel is longer before a voiced consonant or at the end of a word than
before a voiceless one, so only the corpus words whose stressed vowel is in that position are
compared, each with the /hVd/ vowel of the same (General American) quality: bed (head), bird
(heard), dog (hawed), no and go (hoed), three and tree (heed), two (who'd), one (hud), on (hod).

No published figure for the duration of whole words in an isolated-word corpus was found (Speech
Commands publishes none: its 1 s windows were cut around the loudest second, not at the word's
edges), so whole-word duration and syllable rate are printed as the corpus's own figures, without
a reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Mean vowel duration (ms) in isolated /hVd/ words, men and women: Hillenbrand et al. (1995).
HILLENBRAND_1995_VOWEL_MS = {
    "heed": {"male": 243.5, "female": 306.8}, "hid": {"male": 192.9, "female": 241.4},
    "hayed": {"male": 267.2, "female": 320.9}, "head": {"male": 195.6, "female": 251.6},
    "had": {"male": 271.6, "female": 334.2}, "hod": {"male": 260.9, "female": 324.3},
    "hawed": {"male": 274.8, "female": 350.5}, "hoed": {"male": 266.0, "female": 326.7},
    "hood": {"male": 192.9, "female": 249.3}, "who'd": {"male": 236.7, "female": 303.8},
    "hud": {"male": 194.2, "female": 236.5}, "heard": {"male": 263.5, "female": 321.6},
}
# Corpus words whose stressed vowel precedes a voiced consonant or ends the word, with the /hVd/
# word of the same vowel.
HVD_OF_WORD = {"bed": "head", "bird": "heard", "dog": "hawed", "no": "hoed", "go": "hoed", "three": "heed",
               "tree": "heed", "two": "who'd", "one": "hud", "on": "hod"}
# Syllables of the 30 Speech Commands words (the rest have one).
SYLLABLES = {"happy": 2, "marvin": 2, "sheila": 2, "seven": 2, "zero": 2}
# IPA characters that make a phone a vowel, as espeak and Flite (through ARPABET_TO_IPA) spell them.
VOWEL_CHARS = set("aeiouæɑɒɔəɛɜɝɚɪʊʌɐ")


@dataclass
class VowelDuration:
    word: str             # the /hVd/ reference word
    gender: str
    clips: int
    corpus_ms: float      # mean over the corpus clips of the words of this vowel
    published_ms: float
    ratio: float          # corpus / published


@dataclass
class WordTiming:
    gender: str
    clips: int
    word_ms_mean: float
    word_ms_sd: float
    syllables_per_s: float  # total syllables / total duration


def stressed_vowel_seconds(phones: list[tuple[str, float, float, str]]) -> float | None:
    """Duration of the first run of vowel phones (a diphthong may come as two phones), or None."""
    total, started = 0.0, False
    for symbol, start, end, _ in phones:
        if symbol[:1] in VOWEL_CHARS:
            total += end - start
            started = True
        elif started:
            break
    return total if started else None


def vowel_durations(clips) -> list[VowelDuration]:
    """Per /hVd/ vowel and gender: the corpus's mean duration of that vowel against Hillenbrand's.

    `clips`: objects with .gender, .word and .phones (symbol, start_s, end_s, stress)."""
    found: dict[tuple[str, str], list[float]] = {}
    for clip in clips:
        hvd = HVD_OF_WORD.get(clip.word or "")
        seconds = stressed_vowel_seconds(clip.phones or []) if hvd else None
        if seconds is not None and clip.gender in ("male", "female"):
            found.setdefault((hvd, clip.gender), []).append(1000 * seconds)
    rows = []
    for (hvd, gender), values in sorted(found.items()):
        published = HILLENBRAND_1995_VOWEL_MS[hvd][gender]
        mean = float(np.mean(values))
        rows.append(VowelDuration(hvd, gender, len(values), round(mean, 1), published, round(mean / published, 3)))
    return rows


def mean_ratio(rows: list[VowelDuration]) -> float | None:
    """The clip-weighted geometric mean of corpus/published over the vowels compared."""
    if not rows:
        return None
    weights = np.array([r.clips for r in rows], dtype=float)
    return float(np.exp(np.sum(weights * np.log([r.ratio for r in rows])) / weights.sum()))


def word_timings(clips, sample_rate: int) -> list[WordTiming]:
    """Per gender: mean and SD of the clean word's duration, and syllables per second."""
    by_gender: dict[str, list[tuple[float, int]]] = {}
    for clip in clips:
        if clip.word is None:
            continue
        by_gender.setdefault(clip.gender, []).append((len(clip.wav) / sample_rate, SYLLABLES.get(clip.word, 1)))
    rows = []
    for gender, values in sorted(by_gender.items()):
        seconds = np.array([s for s, _ in values])
        rows.append(WordTiming(gender, len(values), round(1000 * float(seconds.mean()), 1),
                               round(1000 * float(seconds.std()), 1),
                               round(sum(n for _, n in values) / float(seconds.sum()), 2)))
    return rows
