"""VoxCeleb1 (1,251 celebrities, utterances from YouTube) into an avbench manifest.

The corpus (the dev and test archives extracted into one wav/ folder) and its lists look like::

    ROOT/wav/id10001/1zcIwhmdeo4/00001.wav   SPEAKER/YOUTUBE_VIDEO/NNNNN.wav, 16 kHz
    ROOT/iden_split.txt                       "1 id10001/1zcIwhmdeo4/00001.wav": 1 train, 2 valid, 3 test
    ROOT/veri_test2.txt                       "1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav"
                                              (VoxCeleb1-O, cleaned; optional)

The label is the speaker. iden_split.txt is the identification protocol (utterance-level: the same
speakers in every split), so it is required and copied into the column `iden_split` (1/2/3) and
into `split` (train/valid/test); bench.data.task_types reads speaker-id from it. Clips that it does not
list (a copy with extra files) get split "test" and an empty `iden_split`: no speaker-id split
uses them, and speaker verification without a trial list uses them as its unseen speakers. The
official release lists every clip, and verification then uses the trial list: its clips are
written to OUT/trials.txt as clip ids (manifest.json `trials`), and the task view keeps those
speakers (the 40 test speakers) out of training.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pandas as pd

from bench.data.manifest import write_manifest

from bench.data.prepare.common import BadAudioLog, CorpusLayoutError, existing_folder, probe_files
from bench.data.task_types import IDEN_SPLIT_CODES
from bench.files import atomic_write_bytes
from bench.paths import prepared_dir

log = logging.getLogger("avbench.prepare.voxceleb1")

NAME = "voxceleb1"
IDEN_SPLIT = "iden_split.txt"
VERI_TRIALS = "veri_test2.txt"
TRIALS_NAME = "trials.txt"
COLUMNS = ["clip_id", "audio_path", "label", "speaker", "split", "num_samples", "sample_rate", "iden_split",
           "youtube_id"]
_SPEAKER = re.compile(r"^id\d{5}$")
_UTTERANCE = re.compile(r"^\d{5}\.wav$")


def _fix_hint() -> str:
    return (f"Pass the VoxCeleb1 folder holding wav/ (dev and test archives extracted into it) and "
            f"{IDEN_SPLIT}; re-extract the archives if they are incomplete.")


def _scan(wav: Path) -> tuple[list[str], list[str]]:
    """Relative paths SPEAKER/VIDEO/NNNNN.wav of every clip, plus files elsewhere (ignored)."""
    clips, ignored = [], []
    for speaker in sorted(os.scandir(wav), key=lambda e: e.name):
        if not speaker.is_dir():
            ignored.append(speaker.name)
            continue
        if not _SPEAKER.match(speaker.name):
            raise CorpusLayoutError(f"{speaker.path}: not a VoxCeleb1 speaker folder (idNNNNN). Move it out of "
                                    f"{wav}.")
        for video in sorted(os.scandir(speaker.path), key=lambda e: e.name):
            if not video.is_dir():
                ignored.append(f"{speaker.name}/{video.name}")
                continue
            for entry in sorted(os.scandir(video.path), key=lambda e: e.name):
                rel = f"{speaker.name}/{video.name}/{entry.name}"
                if not (entry.is_file() and entry.name.lower().endswith(".wav")):
                    ignored.append(rel + ("/" if entry.is_dir() else ""))
                elif not _UTTERANCE.match(entry.name):
                    raise CorpusLayoutError(f"{entry.path}: not a VoxCeleb1 utterance name (NNNNN.wav, e.g. "
                                            "00001.wav). Move files that are not part of VoxCeleb1 out of wav/.")
                else:
                    clips.append(rel)
    return clips, ignored


def _read_lines(path: Path, fields: int, what: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank line, checking the field count and the leading code."""
    out = []
    codes = ("1", "2", "3") if fields == 2 else ("0", "1")
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != fields or parts[0] not in codes:
            raise CorpusLayoutError(f"{path}:{lineno}: expected {what}, got {line.strip()!r}. Restore the file "
                                    "from the VoxCeleb1 website.")
        out.append((lineno, parts))
    return out


def _read_trials(path: Path, known: set[str], kept: set[str]) -> tuple[list[str], int]:
    """Trial lines as "LABEL ENROLL TEST" clip ids, and how many were dropped for skipped clips."""
    lines, dropped = [], 0
    for lineno, (label, *rels) in _read_lines(path, 3, "'LABEL SPEAKER/VIDEO/NNNNN.wav SPEAKER/VIDEO/NNNNN.wav'"):
        for rel in rels:
            if rel not in known:
                raise CorpusLayoutError(f"{path}:{lineno}: {rel} is not under wav/. The trial list needs the "
                                        "test archive (vox1_test_wav) extracted into wav/ too.")
        if all(rel in kept for rel in rels):
            lines.append(f"{label} {rels[0][:-4]} {rels[1][:-4]}\n")
        else:
            dropped += 1
    return lines, dropped


def prepare_voxceleb1(root: str | Path, out_dir: str | Path | None = None, *, on_bad_audio: str = "error",
                      trials: str | Path | None = None, progress: bool = True, workers: int | None = None) -> Path:
    """Write the manifest of a local VoxCeleb1 copy; return the path of manifest.csv.

    - clip_id: SPEAKER/VIDEO/NNNNN; label and speaker: the speaker id; youtube_id: the video;
      iden_split: 1/2/3 from iden_split.txt, empty for clips it does not list; split: train/valid/
      test from it ("test" for the unlisted); audio_path: absolute.
    - trials: a verification list in the VoxCeleb format (default ROOT/veri_test2.txt when it exists).
      It is written to OUT/trials.txt with clip ids; trials naming a clip skipped as bad audio are
      left out and counted (meta `trials_dropped`); naming a file that does not exist is an error.
    - iden_split.txt is required; a listed file that does not exist is an error.
    - Bad files follow `on_bad_audio` ('error' stops naming the file, 'skip' lists it in the meta).

    `out_dir` defaults to bench.paths.prepared_dir("voxceleb1").
    """
    bad = BadAudioLog(on_bad_audio)
    root, wav, iden_path, trials_path = _locate(root, trials)
    clips, ignored = _scan(wav)
    if not clips:
        raise CorpusLayoutError(f"{wav}: no SPEAKER/VIDEO/NNNNN.wav files. {_fix_hint()}")
    if ignored:
        log.warning("ignoring %d file(s) under %s outside SPEAKER/VIDEO/NNNNN.wav, e.g. %s", len(ignored), wav,
                    ignored[0])
    known = set(clips)
    iden = _read_iden_split(iden_path, known, wav)
    unlisted = len(known) - len(iden)
    if unlisted:
        log.warning("%d clip(s) are not in %s: split 'test', no identification split", unlisted, IDEN_SPLIT)

    probed = probe_files([wav / rel for rel in clips], bad, workers=workers, progress=progress,
                         desc=f"probing {NAME}")
    rows = []
    for rel, result in zip(clips, probed):
        if result is None:
            continue
        speaker, video, _ = rel.split("/")
        code = iden.get(rel)
        rows.append({
            "clip_id": rel[:-4], "audio_path": str(wav / rel), "label": speaker, "speaker": speaker,
            "split": IDEN_SPLIT_CODES[code] if code else "test", "num_samples": result[0],
            "sample_rate": result[1], "iden_split": code, "youtube_id": video,
        })
    log.info("%s: %s", NAME, bad.report())
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["iden_split"] = table["iden_split"].astype("Int64")

    out = Path(out_dir).expanduser() if out_dir is not None else prepared_dir(NAME)
    meta = {
        "name": NAME,
        "source": str(root),
        **_write_trials(trials_path, known, table, out, root),
        "unlisted_clips": unlisted,
        "skipped_files": bad.skipped,
        "ignored_files": ignored,
        "labels": sorted(table["label"].unique().tolist()),
    }
    return write_manifest(table, out, meta)


def _locate(root: str | Path, trials: str | Path | None) -> tuple[Path, Path, Path, Path]:
    """The resolved corpus root, its wav/ folder, iden_split.txt and the trial list's path (the
    given one, which must exist, else ROOT/veri_test2.txt, which may not)."""
    root = existing_folder(root, _fix_hint())
    root = root.resolve()
    wav = root / "wav"
    if not wav.is_dir():
        raise CorpusLayoutError(f"{wav}: missing. {_fix_hint()}")
    iden_path = root / IDEN_SPLIT
    if not iden_path.is_file():
        raise CorpusLayoutError(f"{iden_path}: split list missing. Download {IDEN_SPLIT} from the VoxCeleb1 "
                                f"website and put it beside wav/ in {root}.")
    trials_path = Path(trials).expanduser().resolve() if trials is not None else root / VERI_TRIALS
    if trials is not None and not trials_path.is_file():
        raise CorpusLayoutError(f"{trials_path}: trial list not found.")
    return root, wav, iden_path, trials_path


def _read_iden_split(iden_path: Path, known: set[str], wav: Path) -> dict[str, int]:
    """"SPEAKER/VIDEO/NNNNN.wav" -> identification split code (1, 2, 3), every file existing."""
    iden: dict[str, int] = {}
    for lineno, (code, rel) in _read_lines(iden_path, 2, "'SPLIT SPEAKER/VIDEO/NNNNN.wav' with SPLIT 1, 2 or 3"):
        if rel in iden:
            raise CorpusLayoutError(f"{iden_path}:{lineno}: {rel} is listed twice.")
        iden[rel] = int(code)
    absent = [rel for rel in iden if rel not in known]
    if absent:
        raise CorpusLayoutError(f"{iden_path}: names {len(absent)} file(s) that do not exist under {wav}, first: "
                                f"{absent[0]}. Extract both the dev and the test archive into wav/.")
    return iden


def _write_trials(trials_path: Path, known: set[str], table: pd.DataFrame, out: Path, root: Path) -> dict:
    """Write OUT/trials.txt with the trials whose clips were kept; return the meta's trials entries."""
    if not trials_path.is_file():
        log.warning("%s: no trial list; speaker verification on this manifest needs one (or clips outside %s)",
                    root, IDEN_SPLIT)
        return {"trials": None}
    lines, dropped = _read_trials(trials_path, known, {f"{c}.wav" for c in table["clip_id"]})
    if dropped:
        log.warning("%s: %d trial(s) name clips skipped as bad audio and are left out", trials_path, dropped)
    atomic_write_bytes(out / TRIALS_NAME, "".join(lines).encode())
    return {"trials": TRIALS_NAME, "trials_source": str(trials_path), "trials_count": len(lines),
            "trials_dropped": dropped}
