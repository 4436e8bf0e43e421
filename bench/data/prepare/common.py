"""What every preparer shares: the bad-audio policy and its bookkeeping, probing files, and
speaker-disjoint folds for corpora that define no split."""

from __future__ import annotations

import logging
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
from tqdm import tqdm

from bench.data.audio import AudioError, check_waveform, load_audio
from bench.data.task_types import split_of_fold

log = logging.getLogger("avbench.prepare")

BAD_AUDIO_POLICIES = ("error", "skip")


class CorpusLayoutError(ValueError):
    """A corpus folder that does not have the expected layout. Names the path and the fix."""


def existing_folder(root: str | Path, fix_hint: str) -> Path:
    """`root` with ~ expanded, or a CorpusLayoutError naming it and `fix_hint` when it is no folder."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CorpusLayoutError(f"{root}: no such folder. {fix_hint}")
    return root


@dataclass
class BadAudioLog:
    """Applies `--on-bad-audio`: 'error' stops at the first bad file, 'skip' logs and counts it."""

    policy: str = "error"
    skipped: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.policy not in BAD_AUDIO_POLICIES:
            raise ValueError(f"on_bad_audio must be one of {BAD_AUDIO_POLICIES}, got {self.policy!r}")

    def handle(self, path: Path, error: AudioError) -> None:
        if self.policy == "error":
            raise AudioError(f"{error} (to leave such files out and list them in manifest.json, "
                             "use --on-bad-audio skip, or on_bad_audio='skip' from Python)") from error
        log.warning("skipping bad audio: %s", error)
        self.skipped.append({"path": str(path), "error": str(error)})

    def report(self) -> str:
        return f"skipped {len(self.skipped)} bad audio file(s)" if self.skipped else "no bad audio files"


def probe_audio(path: Path, bad: BadAudioLog, *, waveform: np.ndarray | None = None,
                sample_rate: int | None = None) -> tuple[int, int] | None:
    """Validate one clip; return (num_samples, sample_rate) at 16 kHz, or None if skipped.

    Pass `waveform`/`sample_rate` when the audio was decoded elsewhere (e.g. from video), so the
    same checks apply to it.
    """
    try:
        if waveform is None:
            wav = load_audio(path)
        else:
            wav = check_waveform(np.asarray(waveform, dtype=np.float32), path)
    except AudioError as exc:
        bad.handle(path, exc)
        return None
    return int(wav.shape[-1]), int(sample_rate or 16_000)


# Below this many files a process pool costs more to start than it saves.
POOL_MIN_FILES = 2000


class _CollectErrors(BadAudioLog):
    """Runs probe_audio's checks in a worker process and hands the error back unlogged.

    The real policy (raise, or log and count) is applied once, in the parent, in file order, so
    that serial and parallel runs behave identically.
    """

    def handle(self, path: Path, error: AudioError) -> None:
        self.skipped.append({"path": str(path), "error": str(error)})


def _probe_worker(path: str) -> tuple[int, int] | str:
    """(num_samples, sample_rate) of a good file, or the AudioError message of a bad one."""
    collector = _CollectErrors()
    result = probe_audio(Path(path), collector)
    return result if result is not None else collector.skipped[0]["error"]


def probe_files(paths: Sequence[Path], bad: BadAudioLog, *, workers: int | None = None,
                progress: bool = True, desc: str = "probing") -> list[tuple[int, int] | None]:
    """probe_audio over many files: (num_samples, sample_rate) per file, None where `bad` skipped it.

    `workers` processes read the audio (default: one for small trees, else up to 8 cores).
    """
    if workers is None:
        workers = 1 if len(paths) < POOL_MIN_FILES else min(os.cpu_count() or 1, 8)
    names = [str(p) for p in paths]
    out: list[tuple[int, int] | None] = []
    pool = multiprocessing.Pool(workers) if workers > 1 else None
    try:
        results = (pool.imap(_probe_worker, names, chunksize=64) if pool is not None
                   else map(_probe_worker, names))
        for path, result in tqdm(zip(paths, results), total=len(names), desc=desc, unit="file",
                                 disable=not progress):
            if isinstance(result, str):
                bad.handle(Path(path), AudioError(result))
                out.append(None)
            else:
                out.append(result)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return out


def speaker_folds(speakers: Sequence[str], num_folds: int) -> dict[str, int]:
    """Speaker-disjoint folds 1..num_folds for corpora that define none: speakers in sorted order
    are dealt round-robin, so fold sizes differ by at most one speaker and the assignment depends
    only on the set of speakers."""
    ordered = sorted(set(speakers))
    if not 3 <= num_folds <= len(ordered):
        raise CorpusLayoutError(
            f"cannot make {num_folds} speaker-disjoint folds from {len(ordered)} speaker(s): train, "
            "valid and test each need a fold, and each fold a speaker. Use between 3 and "
            f"{len(ordered)} folds.")
    return {speaker: 1 + i % num_folds for i, speaker in enumerate(ordered)}


# The rule speaker_folds and split_of_fold(folds, 1) implement, for the manifests' meta.
SPEAKER_FOLD_RULE = ("actors in sorted order dealt round robin to folds 1..K; split column = fold 1 test, "
                     "fold 2 valid")


class FoldedClip(NamedTuple):
    path: Path
    fields: dict[str, str]  # what the preparer parsed from the file name
    num_samples: int
    sample_rate: int
    speaker: str
    fold: int
    split: str  # of the default fold assignment: fold 1 test, fold 2 valid, the rest train


def probe_in_speaker_folds(clips: Sequence[tuple[Path, dict[str, str]]], speaker_of: Callable[[dict[str, str]], str],
                           num_folds: int, bad: BadAudioLog, *, workers: int | None = None,
                           progress: bool = True, desc: str = "probing") -> list[FoldedClip]:
    """Probe every clip and deal its speaker into a speaker-disjoint fold, for corpora that define
    no split. Folds are dealt over every speaker found, so a skipped file never moves a speaker to
    another fold; clips `bad` skipped are left out (it counts them)."""
    speakers = [speaker_of(fields) for _, fields in clips]
    fold_of = speaker_folds(speakers, num_folds)
    split_of = split_of_fold(range(1, num_folds + 1), 1)
    probed = probe_files([path for path, _ in clips], bad, workers=workers, progress=progress, desc=desc)
    return [FoldedClip(path, fields, result[0], result[1], speaker, fold_of[speaker], split_of[fold_of[speaker]])
            for (path, fields), speaker, result in zip(clips, speakers, probed) if result is not None]
