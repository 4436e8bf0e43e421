"""What every preparer shares: the bad-audio policy and its bookkeeping."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.audio import AudioError, check_waveform, load_audio

log = logging.getLogger("avbench.prepare")

BAD_AUDIO_POLICIES = ("error", "skip")


class CorpusLayoutError(ValueError):
    """A corpus folder that does not have the expected layout. Names the path and the fix."""


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
