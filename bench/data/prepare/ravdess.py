"""RAVDESS (acted emotional speech and song, 24 actors) into an avbench manifest.

The corpus looks like::

    ROOT/Actor_01/03-01-05-01-02-01-01.wav    MODALITY-CHANNEL-EMOTION-INTENSITY-STATEMENT-REPETITION-ACTOR
        modality 01 audio-video, 02 video-only, 03 audio-only; channel 01 speech, 02 song;
        emotion 01 neutral 02 calm 03 happy 04 sad 05 angry 06 fearful 07 disgust 08 surprised;
        intensity 01 normal, 02 strong; statement 01 "Kids are talking by the door",
        02 "Dogs are sitting by the door"; repetition 01/02; actor 01..24 (odd male, even female)

Only audio-only speech (03-01-...) is an emotion-from-speech clip: the other modality/channel
combinations (song, or the .mp4 files of the video archives when they are extracted into the
same folders) are left out and counted per kind in the meta under `filtered_out`.
Actors are dealt into speaker-disjoint folds as for CREMA-D (common.speaker_folds); the split
column is fold 1 tests, fold 2 validates. The release is 48 kHz: bench.data.audio.load_audio resamples
to 16 kHz and the manifest counts samples at 16 kHz.
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

log = logging.getLogger("avbench.prepare.ravdess")

NAME = "ravdess"
MODALITIES = {"01": "audio-video", "02": "video-only", "03": "audio-only"}
CHANNELS = {"01": "speech", "02": "song"}
EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fearful",
            "07": "disgust", "08": "surprised"}
INTENSITIES = {"01": "normal", "02": "strong"}
STATEMENTS = {"01": "kids", "02": "dogs"}
KEPT = ("03", "01")  # audio-only speech
DEFAULT_FOLDS = 5
COLUMNS = ["clip_id", "audio_path", "label", "speaker", "split", "num_samples", "sample_rate", "emotion",
           "emotion_code", "intensity", "statement", "repetition", "gender", "fold"]
_ACTOR_FOLDER = re.compile(r"^Actor_(\d{2})$")
_FILE_NAME = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})\.(wav|mp4)$")


def _fix_hint() -> str:
    return "Pass the folder holding the RAVDESS Actor_01/ ... Actor_24/ folders (Audio_Speech_Actors_01-24)."


def parse_name(path: Path, actor: str) -> dict[str, str]:
    """The seven fields of a RAVDESS file name, checked; CorpusLayoutError names the file if malformed."""
    match = _FILE_NAME.match(path.name)
    fields = dict(zip(("modality", "channel", "emotion", "intensity", "statement", "repetition", "actor"),
                      match.groups()[:7])) if match else {}
    problem = None
    if not match:
        problem = "is not MODALITY-CHANNEL-EMOTION-INTENSITY-STATEMENT-REPETITION-ACTOR.wav (e.g. 03-01-05-01-02-01-12.wav)"
    elif fields["modality"] not in MODALITIES or fields["channel"] not in CHANNELS:
        problem = f"has modality {fields['modality']} / channel {fields['channel']}; RAVDESS uses 01-03 / 01-02"
    elif fields["emotion"] not in EMOTIONS or fields["intensity"] not in INTENSITIES:
        problem = f"has emotion {fields['emotion']} / intensity {fields['intensity']}; RAVDESS uses 01-08 / 01-02"
    elif fields["statement"] not in STATEMENTS or fields["repetition"] not in ("01", "02"):
        problem = f"has statement {fields['statement']} / repetition {fields['repetition']}; RAVDESS uses 01-02"
    elif fields["actor"] != actor:
        problem = f"names actor {fields['actor']} but lies in Actor_{actor}/"
    if problem:
        raise CorpusLayoutError(f"{path}: the file name {problem}. Move files that are not part of RAVDESS "
                                "out of the actor folders.")
    return fields


def prepare_ravdess(root: str | Path, out_dir: str | Path | None = None, *, on_bad_audio: str = "error",
                    folds: int = DEFAULT_FOLDS, progress: bool = True, workers: int | None = None) -> Path:
    """Write the manifest of a local RAVDESS copy; return the path of manifest.csv.

    - clip_id: the file stem; label and emotion: the emotion's name (neutral, calm, ..., surprised);
      emotion_code: "01".."08"; speaker: the actor folder (Actor_01); gender from the actor number;
      intensity, statement, repetition; fold: 1..`folds`, speaker-disjoint; audio_path: absolute.
    - Kept: audio-only speech (03-01-...). Other modality/channel files are counted per kind in the
      meta under `filtered_out`; other files and folders are ignored and listed under
      `ignored_files`; a .wav/.mp4 that does not follow the naming is an error.
    - Bad files follow `on_bad_audio` ('error' stops naming the file, 'skip' lists it in the meta).

    `out_dir` defaults to bench.paths.prepared_dir("ravdess").
    """
    bad = BadAudioLog(on_bad_audio)
    root = existing_folder(root, _fix_hint())
    root = root.resolve()
    actors = sorted(e.name for e in os.scandir(root) if e.is_dir() and _ACTOR_FOLDER.match(e.name))
    if not actors:
        raise CorpusLayoutError(f"{root}: no Actor_NN folders found. {_fix_hint()}")
    ignored = sorted(e.name + ("/" if e.is_dir() else "") for e in os.scandir(root)
                     if not (e.is_dir() and _ACTOR_FOLDER.match(e.name)))
    clips: list[tuple[Path, dict[str, str]]] = []
    filtered: dict[str, int] = {}
    for actor_folder in actors:
        actor = _ACTOR_FOLDER.match(actor_folder).group(1)
        for entry in sorted(os.scandir(root / actor_folder), key=lambda e: e.name):
            if not (entry.is_file() and entry.name.lower().endswith((".wav", ".mp4"))) or entry.name.startswith("."):
                ignored.append(f"{actor_folder}/{entry.name}")
                continue
            fields = parse_name(Path(entry.path), actor)
            if (fields["modality"], fields["channel"]) != KEPT:
                kind = f"{MODALITIES[fields['modality']]} {CHANNELS[fields['channel']]}"
                filtered[kind] = filtered.get(kind, 0) + 1
                continue
            clips.append((Path(entry.path), fields))
    if filtered:
        log.info("ravdess: leaving out files that are not audio-only speech: %s", filtered)
    if not clips:
        raise CorpusLayoutError(f"{root}: no audio-only speech files (03-01-*.wav) in the actor folders"
                                f"{' (found only ' + ', '.join(filtered) + ')' if filtered else ''}. {_fix_hint()}")

    kept = probe_in_speaker_folds(clips, lambda fields: f"Actor_{fields['actor']}", folds, bad, workers=workers,
                                  progress=progress, desc=f"probing {NAME}")
    rows = [{
        "clip_id": c.path.stem, "audio_path": str(c.path), "label": EMOTIONS[c.fields["emotion"]],
        "speaker": c.speaker, "split": c.split, "num_samples": c.num_samples, "sample_rate": c.sample_rate,
        "emotion": EMOTIONS[c.fields["emotion"]], "emotion_code": c.fields["emotion"],
        "intensity": INTENSITIES[c.fields["intensity"]], "statement": STATEMENTS[c.fields["statement"]],
        "repetition": int(c.fields["repetition"]), "gender": "male" if int(c.fields["actor"]) % 2 else "female",
        "fold": c.fold,
    } for c in kept]
    log.info("%s: %s", NAME, bad.report())
    table = pd.DataFrame(rows, columns=COLUMNS)
    meta = {
        "name": NAME,
        "source": str(root),
        "folds": folds,
        "fold_rule": SPEAKER_FOLD_RULE,
        "emotion_codes": EMOTIONS,
        "filtered_out": filtered,
        "skipped_files": bad.skipped,
        "ignored_files": ignored,
        "labels": sorted(table["label"].unique().tolist()),
    }
    out = Path(out_dir).expanduser() if out_dir is not None else prepared_dir(NAME)
    return write_manifest(table, out, meta)
