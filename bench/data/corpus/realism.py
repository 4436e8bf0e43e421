"""How far a corpus's clean speech lies from published facts of real speech: `avbench corpus check`.

Three comparisons, each against published values cited where they are defined:
- the long-term average speech spectrum (LTASS) in 1/3-octave bands, against the "universal"
  LTASS of Byrne et al. (1994), both normalised to 0 dB in the 1 kHz band;
- the fundamental frequency per voice gender: each clip's median F0 over its voiced frames
  (librosa's pYIN), averaged over the clips of each gender, against adult norms;
- durations (bench.data.corpus.timing): the stressed vowel of the words where it is comparable,
  against the vowels of isolated /hVd/ words (Hillenbrand et al. 1995); and the whole word's
  duration and syllable rate, for which no published reference was found.

"Clean speech" is the speech before any room, noise or level: for the embedded corpus it is
re-synthesised for a sample of clips (bench.data.corpus.build.render_clean), because the corpus
stores only the mixed clips. The figures are pure functions of the waveforms, so a real corpus can
be measured the same way from its clean recordings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from bench.data.corpus.timing import VowelDuration, WordTiming, mean_ratio, vowel_durations, word_timings

# Byrne, D., Dillon, H., Tran, K., et al. (1994). An international comparison of long-term average
# speech spectra. J. Acoust. Soc. Am. 96(4), 2108-2120: the universal LTASS (male and female
# talkers of 12 languages), 1/3-octave band levels in dB SPL for an overall level of 70 dB SPL.
LTASS_CENTRES_HZ = (63, 80, 100, 125, 160, 200, 250, 315, 400, 500, 630, 800, 1000, 1250, 1600, 2000,
                    2500, 3150, 4000, 5000, 6300, 8000, 10000, 12500, 16000)
BYRNE_1994_LTASS_DB = (38.6, 43.5, 54.4, 57.7, 56.8, 60.2, 60.3, 59.0, 62.1, 62.1, 60.5, 56.8, 53.7, 53.0,
                       52.0, 48.7, 48.1, 46.8, 45.6, 44.5, 44.3, 43.7, 43.4, 41.3, 40.7)
NORMALISING_BAND_HZ = 1000

# Mean speaking F0 of adults, in Hz. Peterson, G. E. & Barney, H. L. (1952). Control methods used
# in a study of the vowels. J. Acoust. Soc. Am. 24(2), 175-184: /hVd/ words spoken in isolation,
# 33 men and 28 women, averaged over ten vowels. Traunmuller, H. & Eriksson, A. (1995). The
# frequency range of the voice fundamental in the speech of male and female adults (Stockholm
# University): the typical values across published studies of running speech.
PETERSON_BARNEY = "Peterson & Barney 1952 (isolated /hVd/ words)"
F0_NORMS_HZ = {
    PETERSON_BARNEY: {"male": 132.0, "female": 223.0},
    "Traunmuller & Eriksson 1995 (typical, running speech)": {"male": 120.0, "female": 210.0},
}

N_FFT = 2048  # 128 ms at 16 kHz: 7.8 Hz bins, a Hann main lobe of +-15.6 Hz
HOP = 512
LOWEST_BAND_HZ = 100


@dataclass
class CleanClip:
    """One clip's clean speech: the talker's gender, the waveform, and where known the word and its
    phones (symbol, start_s, end_s, stress) for the duration figures."""

    gender: str
    wav: np.ndarray
    word: str | None = None
    phones: list = field(default_factory=list)


@dataclass
class BandDeviation:
    centre_hz: int
    corpus_db: float       # re the corpus's 1 kHz band
    published_db: float    # re the published 1 kHz band
    deviation_db: float    # corpus - published


@dataclass
class F0Deviation:
    gender: str
    clips: int
    voiced_clips: int      # clips with enough voiced frames to measure
    mean_hz: float
    sd_hz: float
    published: dict[str, float]          # source -> mean Hz
    deviation_semitones: dict[str, float]  # source -> 12 log2(corpus / published)


def band_edges(centre_hz: float) -> tuple[float, float]:
    """The 1/3-octave band around `centre_hz` (base-2 edges)."""
    return centre_hz * 2 ** (-1 / 6), centre_hz * 2 ** (1 / 6)


def usable_bands(sample_rate: int) -> list[int]:
    """The published bands compared: from 100 Hz (the 63 and 80 Hz bands, 15-19 Hz wide, are
    narrower than the analysis window's main lobe, so their levels would be their neighbours'
    leakage) up to the last band wholly below Nyquist (6.3 kHz at 16 kHz)."""
    return [c for c in LTASS_CENTRES_HZ if c >= LOWEST_BAND_HZ and band_edges(c)[1] <= sample_rate / 2]


def long_term_power_spectrum(waves: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """Sum over every frame of every clip of the Hann-windowed power spectrum, and the frame count.

    All frames are pooled, so loud clips weigh more, as in an LTASS of running speech."""
    window = np.hanning(N_FFT)
    total, frames = np.zeros(N_FFT // 2 + 1), 0
    for wav in waves:
        wav = np.asarray(wav, dtype=np.float64)
        if len(wav) < N_FFT:
            wav = np.pad(wav, (0, N_FFT - len(wav)))
        starts = np.arange(0, len(wav) - N_FFT + 1, HOP)
        segments = np.stack([wav[s: s + N_FFT] for s in starts]) * window
        total += (np.abs(np.fft.rfft(segments, axis=1)) ** 2).sum(axis=0)
        frames += len(starts)
    return total, frames


def third_octave_levels(power: np.ndarray, sample_rate: int) -> dict[int, float]:
    """dB level (arbitrary reference) of each usable 1/3-octave band of a power spectrum."""
    freqs = np.fft.rfftfreq(N_FFT, 1 / sample_rate)
    levels = {}
    for centre in usable_bands(sample_rate):
        lo, hi = band_edges(centre)
        in_band = (freqs >= lo) & (freqs < hi)
        levels[centre] = float(10 * np.log10(power[in_band].sum() + 1e-30))
    return levels


def ltass_deviation(levels: dict[int, float]) -> list[BandDeviation]:
    """Each band of `levels` against Byrne et al. (1994), both re their own 1 kHz band."""
    published = dict(zip(LTASS_CENTRES_HZ, BYRNE_1994_LTASS_DB))
    ours_1k, theirs_1k = levels[NORMALISING_BAND_HZ], published[NORMALISING_BAND_HZ]
    rows = []
    for centre, level in levels.items():
        corpus_db, published_db = level - ours_1k, published[centre] - theirs_1k
        rows.append(BandDeviation(centre, round(corpus_db, 2), round(published_db, 2),
                                  round(corpus_db - published_db, 2)))
    return rows


def clip_f0(wav: np.ndarray, sample_rate: int, min_voiced_frames: int = 3) -> float | None:
    """Median F0 (Hz) over the clip's voiced frames, or None with too few voiced frames.

    pYIN over 60-400 Hz, the adult speaking range. A floor of 40 Hz was tried: it voiced no more of
    the embedded corpus's clips and added subharmonic errors (medians of 43-50 Hz)."""
    import librosa

    f0, voiced, _ = librosa.pyin(np.asarray(wav, dtype=np.float32), fmin=60.0, fmax=400.0, sr=sample_rate,
                                 frame_length=1024, hop_length=256)
    f0 = f0[voiced & np.isfinite(f0)]
    return float(np.median(f0)) if len(f0) >= min_voiced_frames else None


def f0_deviation(clips: list[CleanClip], sample_rate: int) -> list[F0Deviation]:
    """Per gender (male, female): mean and SD of the clips' median F0, against each norm."""
    by_gender: dict[str, list[float | None]] = {}
    for clip in clips:
        by_gender.setdefault(clip.gender, []).append(clip_f0(clip.wav, sample_rate))
    rows = []
    for gender in sorted(by_gender):
        values = np.array([v for v in by_gender[gender] if v is not None])
        if not len(values):
            continue
        published = {source: norms[gender] for source, norms in F0_NORMS_HZ.items() if gender in norms}
        mean = float(values.mean())
        rows.append(F0Deviation(gender, len(by_gender[gender]), int(len(values)), round(mean, 1),
                                round(float(values.std()), 1), published,
                                {s: round(12 * np.log2(mean / hz), 2) for s, hz in published.items()}))
    return rows


@dataclass
class RealismReport:
    clips: int
    sample_rate: int
    ltass: list[BandDeviation]
    f0: list[F0Deviation]
    vowels: list[VowelDuration] = field(default_factory=list)
    words: list[WordTiming] = field(default_factory=list)

    def to_dict(self) -> dict:
        ratio = mean_ratio(self.vowels)
        return {"clips": self.clips, "sample_rate": self.sample_rate,
                "ltass_reference": "Byrne et al. 1994, universal LTASS, re 1 kHz band",
                "ltass": [asdict(b) for b in self.ltass], "f0": [asdict(f) for f in self.f0],
                "ltass_rms_deviation_db": round(rms_deviation(self.ltass), 2),
                "vowel_duration_reference": "Hillenbrand et al. 1995, vowels of isolated /hVd/ words",
                "vowel_durations": [asdict(v) for v in self.vowels],
                "vowel_duration_mean_ratio": None if ratio is None else round(ratio, 3),
                "word_timing": [asdict(w) for w in self.words]}


def rms_deviation(bands: list[BandDeviation]) -> float:
    return float(np.sqrt(np.mean([b.deviation_db ** 2 for b in bands])))


def realism_report(clips: list[CleanClip], sample_rate: int) -> RealismReport:
    """The report for clean speech clips; the duration parts need the clips' words and phones."""
    power, _ = long_term_power_spectrum([clip.wav for clip in clips])
    return RealismReport(len(clips), sample_rate, ltass_deviation(third_octave_levels(power, sample_rate)),
                         f0_deviation(clips, sample_rate), vowel_durations(clips), word_timings(clips, sample_rate))


def report_text(report: RealismReport) -> str:
    lines = [f"realism of the clean speech ({report.clips} clips), against published facts of real speech:",
             "  LTASS, 1/3-octave bands re 1 kHz (Byrne et al. 1994, universal LTASS):",
             "    band Hz   corpus dB   published dB   deviation dB"]
    lines += [f"    {b.centre_hz:>7}   {b.corpus_db:>9.1f}   {b.published_db:>12.1f}   {b.deviation_db:>+12.1f}"
              for b in report.ltass]
    lines.append(f"    RMS deviation over {len(report.ltass)} bands: {rms_deviation(report.ltass):.1f} dB")
    lines.append("  F0, mean of each clip's median over voiced frames (pYIN):")
    for f in report.f0:
        against = "; ".join(f"{source}: {hz:g} Hz, {f.deviation_semitones[source]:+.1f} st"
                            for source, hz in f.published.items())
        lines.append(f"    {f.gender}: {f.mean_hz:.1f} Hz (SD {f.sd_hz:.1f}, {f.voiced_clips}/{f.clips} clips voiced)"
                     f" vs {against}")
    lines += _timing_lines(report)
    return "\n".join(lines)


def _timing_lines(report: RealismReport) -> list[str]:
    lines = []
    if report.vowels:
        lines.append("  stressed-vowel duration, words comparable with isolated /hVd/ words (Hillenbrand et al. 1995):")
        lines.append("    /hVd/ word  gender   clips   corpus ms   published ms   corpus/published")
        lines += [f"    {v.word:<10}  {v.gender:<6}  {v.clips:>6}   {v.corpus_ms:>9.0f}   {v.published_ms:>12.0f}"
                  f"   {v.ratio:>16.2f}" for v in report.vowels]
        lines.append(f"    mean ratio (geometric, clip-weighted): {mean_ratio(report.vowels):.2f}")
    for w in report.words:
        lines.append(f"  whole word, {w.gender}: {w.word_ms_mean:.0f} ms (SD {w.word_ms_sd:.0f}, {w.clips} clips), "
                     f"{w.syllables_per_s:.2f} syllables/s (no published reference for isolated-word corpora)")
    return lines


def clip_items(config, rows) -> list[tuple[int, int, int]]:
    """The build's (speaker index, word index, rendition) of each manifest row (speakers are named
    spkNNN by their index, bench.data.corpus.speakers.make_speakers)."""
    return [(int(str(row.speaker).removeprefix("spk")), config.word_list.index(row.label), int(row.rendition))
            for row in rows.itertuples(index=False)]


def embedded_clean_sample(corpus, clips: int = 240, seed: int = 0,
                          workers: int | None = None) -> list[CleanClip]:
    """The dry speech of `clips` clips of a built embedded corpus, drawn at random (seeded), each
    with its speaker's gender, word and phones: re-synthesised with the build's voice, word and prosody, before the
    room and noise. libespeak-ng's samples drift a little with its process's history, so these are
    the same utterances up to that drift, not the bytes the build mixed."""
    import os

    from bench.data.corpus.build import fresh_process_pool, render_clean

    config = corpus.config
    table = corpus.manifest.table
    items = clip_items(config, table.sample(n=min(clips, len(table)), random_state=seed))
    workers = max(1, min(workers or os.cpu_count() or 1, len(items)))
    chunks = [items[k::workers] for k in range(workers)]
    with fresh_process_pool(workers, config.engine) as pool:
        rendered = [clip for part in pool.map(render_clean, [(config, chunk) for chunk in chunks]) for clip in part]
    return [CleanClip(gender, wav, word, phones) for gender, wav, word, phones in rendered]


def comparison_table(reports: dict[str, dict]) -> str:
    """Markdown: the realism figures of several corpora side by side (name -> manifest.json's
    `realism`), each band or statistic with its published value and each corpus's deviation."""
    names = list(reports)
    head = "| figure | published | " + " | ".join(names) + " |\n|---|---:|" + "---:|" * len(names)
    lines = [head]
    bands = {b["centre_hz"]: b["published_db"] for r in reports.values() for b in r.get("ltass", [])}
    for centre, published in sorted(bands.items()):
        cells = [next((f"{b['deviation_db']:+.1f} dB" for b in r.get("ltass", []) if b["centre_hz"] == centre), "—")
                 for r in reports.values()]
        lines.append(f"| LTASS {centre} Hz: corpus - published | {published:+.1f} dB re 1 kHz | " + " | ".join(cells) + " |")
    lines.append("| LTASS RMS deviation over the bands | 0 | " + " | ".join(
        f"{r['ltass_rms_deviation_db']:.1f} dB" if "ltass_rms_deviation_db" in r else "—" for r in reports.values()) + " |")
    for gender in ("female", "male"):
        cells = []
        for r in reports.values():
            row = next((f for f in r.get("f0", []) if f["gender"] == gender), None)
            cells.append("—" if row is None else f"{row['mean_hz']:.0f} Hz ({row['voiced_clips']}/{row['clips']} voiced)")
        published = F0_NORMS_HZ[PETERSON_BARNEY][gender]
        lines.append(f"| F0 {gender}: mean of clip medians | {published:g} Hz (Peterson & Barney 1952) | "
                     + " | ".join(cells) + " |")
    lines.append("| stressed vowel duration / the isolated /hVd/ vowel's (Hillenbrand et al. 1995) | 1.00 | " + " | ".join(
        f"{r['vowel_duration_mean_ratio']:.2f}" if r.get("vowel_duration_mean_ratio") else "—" for r in reports.values()) + " |")
    for gender in ("female", "male"):
        cells = [next((f"{w['word_ms_mean']:.0f} ms, {w['syllables_per_s']:.2f} syll/s" for w in r.get("word_timing", [])
                       if w["gender"] == gender), "—") for r in reports.values()]
        lines.append(f"| whole word, {gender} | none found | " + " | ".join(cells) + " |")
    return "\n".join(lines)
