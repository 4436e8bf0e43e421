"""CREMA-D (acted emotional speech, 91 actors) into an avbench manifest.

The corpus looks like::

    ROOT/AudioWAV/1001_DFA_ANG_XX.wav     ACTOR_SENTENCE_EMOTION_LEVEL.wav
        actor 1001..1091; sentence: one of 12 three-letter codes; emotion ANG DIS FEA HAP NEU SAD;
        level LO MD HI, or XX (unspecified)

CREMA-D defines no split, so actors are dealt into speaker-disjoint folds (common.speaker_folds:
sorted actor ids, round robin, folds 1..K). The emotion task view (bench.data.task_types) evaluates
every fold; the manifest's own `split` column is the first of them (fold 1 tests, fold 2
validates, the rest trains), so a words-style reader still sees a speaker-disjoint split.
The release is 16 kHz; any other rate is resampled by bench.data.audio.load_audio and the manifest
counts samples at 16 kHz, as for every corpus.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pandas as pd

from bench.data.manifest import write_manifest
from bench.paths import prepared_dir
from bench.data.prepare.common import (SPEAKER_FOLD_RULE, BadAudioLog, CorpusLayoutError, existing_folder,
                                       probe_in_speaker_folds)

log = logging.getLogger("avbench.prepare.cremad")

NAME = "crema-d"
AUDIO_FOLDER = "AudioWAV"
EMOTIONS = {"ANG": "angry", "DIS": "disgust", "FEA": "fearful", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
DEFAULT_FOLDS = 5
COLUMNS = ["clip_id", "audio_path", "label", "speaker", "split", "num_samples", "sample_rate", "emotion",
           "emotion_code", "sentence", "intensity", "fold"]
_FILE_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})\.wav$")


def _fix_hint() -> str:
    return f"Pass the CREMA-D folder that holds {AUDIO_FOLDER}/ (or {AUDIO_FOLDER}/ itself)."


def find_audio_folder(root: str | Path) -> Path:
    root = existing_folder(root, _fix_hint())
    if (root / AUDIO_FOLDER).is_dir():
        return (root / AUDIO_FOLDER).resolve()
    if root.name == AUDIO_FOLDER:
        return root.resolve()
    raise CorpusLayoutError(f"{root}: no {AUDIO_FOLDER}/ folder here. {_fix_hint()}")


def parse_name(path: Path) -> dict[str, str]:
    """actor, sentence, emotion code and level from a CREMA-D file name; CorpusLayoutError if malformed."""
    match = _FILE_NAME.match(path.name)
    if not match or match.group(3) not in EMOTIONS or match.group(4) not in LEVELS:
        raise CorpusLayoutError(
            f"{path}: not a CREMA-D file name (ACTOR_SENTENCE_EMOTION_LEVEL.wav, e.g. 1001_DFA_ANG_XX.wav, "
            f"emotion one of {', '.join(EMOTIONS)}, level one of {', '.join(LEVELS)}). Move files that are "
            "not part of CREMA-D out of the folder.")
    actor, sentence, code, level = match.groups()
    return {"actor": actor, "sentence": sentence, "code": code, "level": level}


def prepare_cremad(root: str | Path, out_dir: str | Path | None = None, *, on_bad_audio: str = "error",
                   folds: int = DEFAULT_FOLDS, progress: bool = True, workers: int | None = None) -> Path:
    """Write the manifest of a local CREMA-D copy; return the path of manifest.csv.

    - clip_id: the file stem; label and emotion: the emotion's name (angry, disgust, fearful, happy,
      neutral, sad); emotion_code: as in the file name (ANG, ...); speaker: the actor id;
      sentence, intensity (low/medium/high/unspecified); fold: 1..`folds`, speaker-disjoint;
      audio_path: absolute.
    - Bad files follow `on_bad_audio` ('error' stops naming the file, 'skip' lists it in the meta
      under `skipped_files`). Files in AudioWAV that are not .wav, and anything in subfolders, are
      ignored and listed under `ignored_files`; a .wav with another naming is an error.

    `out_dir` defaults to bench.paths.prepared_dir("crema-d").
    """
    bad = BadAudioLog(on_bad_audio)
    audio = find_audio_folder(root)
    clips: list[tuple[Path, dict[str, str]]] = []
    ignored: list[str] = []
    for entry in sorted(os.scandir(audio), key=lambda e: e.name):
        if entry.is_file() and entry.name.lower().endswith(".wav") and not entry.name.startswith("."):
            clips.append((Path(entry.path), parse_name(Path(entry.path))))
        else:
            ignored.append(entry.name + ("/" if entry.is_dir() else ""))
    if not clips:
        raise CorpusLayoutError(f"{audio}: no .wav files. {_fix_hint()}")
    if ignored:
        log.warning("ignoring %d entr(ies) in %s that are not CREMA-D wavs, e.g. %s", len(ignored), audio, ignored[0])

    kept = probe_in_speaker_folds(clips, lambda fields: fields["actor"], folds, bad, workers=workers,
                                  progress=progress, desc=f"probing {NAME}")
    rows = [{
        "clip_id": c.path.stem, "audio_path": str(c.path), "label": EMOTIONS[c.fields["code"]],
        "speaker": c.speaker, "split": c.split, "num_samples": c.num_samples, "sample_rate": c.sample_rate,
        "emotion": EMOTIONS[c.fields["code"]], "emotion_code": c.fields["code"], "sentence": c.fields["sentence"],
        "intensity": LEVELS[c.fields["level"]], "fold": c.fold,
    } for c in kept]
    log.info("%s: %s", NAME, bad.report())
    table = pd.DataFrame(rows, columns=COLUMNS)
    meta = {
        "name": NAME,
        "source": str(audio),
        "folds": folds,
        "fold_rule": SPEAKER_FOLD_RULE,
        "emotion_codes": EMOTIONS,
        "skipped_files": bad.skipped,
        "ignored_files": ignored,
        "labels": sorted(table["label"].unique().tolist()),
    }
    out = Path(out_dir).expanduser() if out_dir is not None else prepared_dir(NAME)
    return write_manifest(table, out, meta)
