"""`avbench corpus build`: synthesise the embedded audiovisual isolated-word corpus offline.

Every clip is one of the 30 Speech Commands words, spoken by a synthetic speaker (libespeak-ng or
CMU Flite: bench.data.corpus.engines), 1 s at 16 kHz, jittered in time, with noise at a random
SNR, optional reverberation, and a recording channel (bench.data.corpus.channels). Beside the
audio, a 25 fps articulation track (mouth opening, width, rounding) derived from the phoneme
timings drives a renderer of grayscale mouth frames (bench.data.corpus.mouth).

Determinism: each clip draws from its own seed (corpus seed, speaker, word, rendition), so the
same config gives byte-identical files whatever the number of workers. The corpus id hashes the
config and the generator version: a changed parameter gives a new folder, never a stale reuse.

The config, the corpus id and a built corpus on disk are bench.data.corpus.embedded's.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from bench.data.audio import TARGET_SAMPLE_RATE
from bench.data.corpus import acoustics, engines
from bench.data.corpus.channels import CHANNEL_MIXES, apply_channel, draw_channel
from bench.data.corpus.embedded import GENERATOR_VERSION, CorpusConfig, EmbeddedCorpus, corpus_path
from bench.data.corpus.engines import Rendered
from bench.data.corpus.speakers import STYLES, Speaker, assign_splits, make_speakers
from bench.data.corpus.articulation import speaker_track
from bench.data.corpus.visemes import VIDEO_FPS
from bench.data.manifest import MANIFEST_NAME, write_manifest

CHANNEL_STREAM = 0xC4A7  # the extra seed word of each clip's channel draws
ARTICULATION_STREAM = 0xA27C  # ... and of its articulation draws (offset, excursion, motor noise)

# Opening gain by espeak stress mark: primary, secondary, unstressed.
STRESS_OPENING_GAIN = {"ˈ": 1.15, "ˌ": 1.0, "": 0.9}

# ---------------------------------------------------------------------------------------------
# Worker side: one synthesiser per process (bench.data.corpus.engines).


def fresh_process_pool(workers: int, engine: str = "espeak") -> ProcessPoolExecutor:
    """A pool that runs every task in a new process forked from a clean template.

    libespeak-ng carries hidden state from one utterance to the next (its output for the same
    call drifts with the process's history, and espeak_Terminate does not reset it). Running each
    task (one speaker, clips in a fixed order) in a fresh process makes the audio a function of
    the task alone, so builds are byte-identical whatever the number of workers. The forkserver
    template never loads a synthesiser and holds none of the parent's threads.
    """
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["bench.data.corpus.build"])
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(engine,), max_tasks_per_child=1)


def _init_worker(engine: str) -> None:
    # Each worker is single-threaded: the pool is the parallelism.
    os.environ["OMP_NUM_THREADS"] = "1"
    engines.start(engine)


def _noise_seed(*parts) -> int:
    """A stable 32-bit seed for the engine's rand() from the utterance's identity."""
    return zlib.crc32(":".join(map(str, parts)).encode())


def _speak(config: CorpusConfig, speaker: Speaker, word: str, **prosody) -> Rendered:
    return engines.speak(config.engine, speaker, word, **prosody)


def _clip_rng(config: CorpusConfig, *ids: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([config.seed, *ids]))


def _clean_utterance(config: CorpusConfig, speaker: Speaker, spk_idx: int, word_idx: int,
                     rendition: int) -> tuple[Rendered, str, np.random.Generator]:
    """The clip's dry speech (before level, room, noise), its style, and the clip's generator
    positioned after the draws that made them (the rest of the clip draws from it)."""
    rng = _clip_rng(config, spk_idx, word_idx, rendition)
    word = config.word_list[word_idx]
    style_name = str(rng.choice(list(STYLES)))
    style = STYLES[style_name]
    rendered = _speak(
        config, speaker, word,
        pitch=speaker.pitch + style.pitch + int(rng.integers(-4, 5)),
        pitch_range=speaker.pitch_range + style.pitch_range + int(rng.integers(-5, 6)),
        rate=int(round(speaker.rate * style.rate * rng.uniform(0.93, 1.07))),
        noise_seed=_noise_seed(config.seed, spk_idx, word_idx, rendition),
    )
    return rendered, style_name, rng


def render_clean(task: tuple) -> list[tuple[str, np.ndarray, str, list]]:
    """Worker task: the dry 16 kHz speech of (speaker index, word index, rendition) items of a
    corpus, with each speaker's gender, the word and its phone timings (the realism report reads
    these, bench.data.corpus.realism)."""
    config, items = task
    speakers = make_speakers(config.speakers, config.seed, config.engine)
    rendered = [(s, w, _clean_utterance(config, speakers[s], s, w, r)[0]) for s, w, r in items]
    return [(speakers[s].gender, r.audio, config.word_list[w], r.phonemes) for s, w, r in rendered]


def _make_clip(config: CorpusConfig, speaker: Speaker, spk_idx: int, word_idx: int, rendition: int,
               babble_speakers: list[Speaker]) -> tuple[np.ndarray, np.ndarray, dict]:
    rendered, style_name, rng = _clean_utterance(config, speaker, spk_idx, word_idx, rendition)
    style = STYLES[style_name]
    n = int(round(config.clip_seconds * TARGET_SAMPLE_RATE))
    speech = rendered.audio
    trimmed = len(speech) > n
    if trimmed:  # like Speech Commands: a word longer than the clip is cut to its centre
        cut = (len(speech) - n) // 2
        speech = speech[cut: cut + n]
        offset = -cut
    else:
        margin = min(int(0.05 * TARGET_SAMPLE_RATE), (n - len(speech)) // 2)
        offset = int(rng.integers(margin, n - len(speech) - margin + 1))
    clip = np.zeros(n, dtype=np.float32)
    lo = max(offset, 0)
    clip[lo: lo + len(speech)] = speech
    active = slice(lo, lo + len(speech))

    level = rng.uniform(*config.level_dbfs) + style.gain_db
    clip *= 10.0 ** (level / 20.0) / (np.max(np.abs(clip)) + 1e-12)
    reverb = bool(rng.random() < config.reverb_prob)
    rt60 = float(rng.uniform(*config.rt60_s)) if reverb else 0.0
    if reverb:
        clip = acoustics.reverberate(clip, acoustics.synthetic_rir(rt60, TARGET_SAMPLE_RATE, rng))
    noise_type = str(rng.choice(list(config.noise_types)))
    snr = float(rng.uniform(*config.snr_db))
    if noise_type == "babble":
        talkers = [babble_speakers[int(i)] for i in rng.choice(len(babble_speakers), size=4)]
        utts = [_speak(config, t, config.word_list[int(rng.integers(config.words))], pitch=t.pitch,
                       pitch_range=t.pitch_range, rate=t.rate,
                       noise_seed=_noise_seed(config.seed, spk_idx, word_idx, rendition, "babble", k)).audio
                for k, t in enumerate(talkers)]
        noise = acoustics.babble(utts, n, rng)
    else:
        noise = acoustics.coloured_noise(n, acoustics.COLOURED_NOISE_BETA[noise_type], rng)
    clip = acoustics.mix_at_snr(clip, noise, snr, active)
    peak = float(np.max(np.abs(clip)))
    if peak > 0.99:
        clip *= 0.99 / peak
    channel = None
    if CHANNEL_MIXES[config.channels] is not None:
        # Its own random stream: the draws above, and so the corpora built before channels, stay.
        channel = draw_channel(_clip_rng(config, spk_idx, word_idx, rendition, CHANNEL_STREAM),
                               CHANNEL_MIXES[config.channels])
        clip = apply_channel(clip, channel)

    shift = offset / TARGET_SAMPLE_RATE
    # Louder styles open the jaw wider (about 5% per dB), stressed syllables more than unstressed.
    style_gain = 1.0 + 0.05 * style.gain_db
    phonemes = [(s, a + shift, b + shift, style_gain * STRESS_OPENING_GAIN.get(stress, 1.0))
                for s, a, b, stress in rendered.phonemes]
    # Its own stream too, so the audio is what version 3 made; the speaker's habitual rate and the
    # style's set how fast the clip is said (faster: smaller gestures).
    track, articulation = speaker_track(phonemes, config.clip_seconds, speaker.articulation,
                                        _clip_rng(config, spk_idx, word_idx, rendition, ARTICULATION_STREAM),
                                        rate_wpm=speaker.rate * style.rate, fps=VIDEO_FPS)
    info = {"emotion": style_name, "snr_db": round(snr, 2), "noise_type": noise_type,
            "reverb_rt60": round(rt60, 3), "trimmed": trimmed,
            "start": round(lo / TARGET_SAMPLE_RATE, 4),
            "end": round(min(lo + len(speech), n) / TARGET_SAMPLE_RATE, 4),
            "phonemes": " ".join(p[0] for p in rendered.phonemes),
            "av_offset_ms": round(1000.0 * articulation.offset_s, 1)}
    if channel is not None:
        info["channel"] = channel.name
    return clip, track, info


def _build_speaker(task: tuple) -> list[dict]:
    config, speaker, spk_idx, split, babble_speakers, out = task
    rows = []
    for word_idx, word in enumerate(config.word_list):
        for r in range(config.renditions):
            clip, track, info = _make_clip(config, speaker, spk_idx, word_idx, r, babble_speakers)
            stem = f"{word}/{speaker.speaker}_nohash_{r}"
            (out / "audio" / word).mkdir(parents=True, exist_ok=True)
            (out / "tracks" / word).mkdir(parents=True, exist_ok=True)
            sf.write(out / "audio" / f"{stem}.wav", clip, TARGET_SAMPLE_RATE, subtype="PCM_16")
            np.save(out / "tracks" / f"{stem}.npy", track)
            rows.append({"clip_id": stem, "audio_path": f"audio/{stem}.wav", "label": word,
                         "speaker": speaker.speaker, "split": split, "num_samples": len(clip),
                         "sample_rate": TARGET_SAMPLE_RATE, "mouth_track": f"tracks/{stem}.npy",
                         "accent": speaker.accent, "gender": speaker.gender, "rendition": r, **info})
    return rows


def _build_noise_bank(task: tuple) -> list[str]:
    """Background-noise set kept aside from the clips (like Speech Commands' _background_noise_)."""
    config, babble_speakers, out = task
    rng = _clip_rng(config, 0xB0A4D)
    n = int(config.noise_bank_seconds * TARGET_SAMPLE_RATE)
    (out / "noise").mkdir(parents=True, exist_ok=True)
    names = []
    for kind, beta in acoustics.COLOURED_NOISE_BETA.items():
        sf.write(out / "noise" / f"{kind}_noise.wav", 0.1 * acoustics.coloured_noise(n, beta, rng),
                 TARGET_SAMPLE_RATE, subtype="PCM_16")
        names.append(f"noise/{kind}_noise.wav")
    utts = []
    for k in range(int(config.noise_bank_seconds * 3)):
        t = babble_speakers[int(rng.integers(len(babble_speakers)))]
        utts.append(_speak(config, t, config.word_list[int(rng.integers(config.words))], pitch=t.pitch,
                           pitch_range=t.pitch_range, rate=t.rate, noise_seed=_noise_seed(config.seed, "bank", k)).audio)
    sf.write(out / "noise" / "babble.wav", 0.1 * acoustics.babble(utts, n, rng), TARGET_SAMPLE_RATE,
             subtype="PCM_16")
    names.append("noise/babble.wav")
    return names


# ---------------------------------------------------------------------------------------------
# Driver side.

def build_corpus(config: CorpusConfig, out_root: Path | None = None, workers: int | None = None,
                 force: bool = False, progress: bool = True) -> EmbeddedCorpus:
    """Build the corpus (or reuse an identical finished build) and return it.

    The build goes to a hidden `.partial` folder that is renamed into place only when complete,
    so a killed build never leaves a folder that looks finished.
    """
    from tqdm import tqdm

    config = config.validated()
    final = corpus_path(config, out_root)
    if (final / MANIFEST_NAME).is_file() and not force:
        return EmbeddedCorpus.open(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)

    started = time.time()
    speakers = make_speakers(config.speakers, config.seed, config.engine)
    splits = assign_splits(speakers, config.split_fractions, config.seed)
    # Babble is made from training speakers only, so no held-out voice leaks into training clips.
    babble_speakers = [s for s in speakers if splits[s.speaker] == "train"]
    workers = max(1, min(workers or os.cpu_count() or 1, config.speakers))
    tasks = [(config, s, i, splits[s.speaker], babble_speakers, partial) for i, s in enumerate(speakers)]
    rows: list[dict] = []
    try:
        with fresh_process_pool(workers, config.engine) as pool:
            noise_job = pool.submit(_build_noise_bank, (config, babble_speakers, partial))
            jobs = [pool.submit(_build_speaker, task) for task in tasks]
            total = config.speakers * config.words * config.renditions
            with tqdm(total=total, unit="clip", desc="synthesising", disable=not progress) as bar:
                for job in as_completed(jobs):
                    speaker_rows = job.result()
                    rows.extend(speaker_rows)
                    bar.update(len(speaker_rows))
            noise_sources = noise_job.result()
        table = pd.DataFrame(rows)
        speaker_table = pd.DataFrame([{**s.to_row(), "split": splits[s.speaker]} for s in speakers])
        speaker_table.to_csv(partial / "speakers.csv", index=False, lineterminator="\n")
        meta = {
            "name": f"embedded-{config.corpus_id}",
            "kind": "embedded",
            "corpus_id": config.corpus_id,
            "size": config.size,
            "config": config.identity(),
            "generator_version": GENERATOR_VERSION,
            "labels": list(config.word_list),
            "noise_sources": noise_sources,
            "skipped_files": [],
            "trimmed_clips": int(table["trimmed"].sum()),
            "video": {"fps": VIDEO_FPS, "frame_size": 64, "track_channels": ["opening", "width", "rounding"]},
            "emotion_note": "emotion is a prosody-style proxy (pitch, range, rate, loudness), not acted emotion",
            "build_seconds": round(time.time() - started, 1),
            "workers": workers,
        }
        write_manifest(table, partial, meta)
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return EmbeddedCorpus.open(final)
