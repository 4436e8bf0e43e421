"""IEMOCAP (5 sessions of dyadic acted dialogues) into an avbench manifest, 4-class emotion.

The release (IEMOCAP_full_release) looks like::

    ROOT/Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav    one wav per utterance
    ROOT/Session1/dialog/EmoEvaluation/Ses01F_impro01.txt                 the labels, one line each:
        [6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]
        (start - end in the dialogue, utterance, majority emotion, [valence, arousal, dominance])

Other lines of an EmoEvaluation file (the header, per-annotator "C-E1:" lines, blanks) carry no
majority label and are skipped; a line that starts with '[' but does not parse is an error.
The usual 4-class protocol is kept: neu, hap + exc (merged into happy), sad, ang. Utterances with
other labels (fru, sur, fea, oth, dis, and xxx: no majority) are left out and counted per label in
the meta under `dropped_labels`. Each session has one female and one male actor: the speaker is
session + the gender letter at the start of the utterance's last part (Ses01F_impro01_M000 is
spoken by the male actor of session 1, speaker "Ses01M"). The fold is the session, so the
emotion task view (bench.data.task_types) runs leave-one-session-out; the manifest's split column is
the first fold (session 1 tests, session 2 validates).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pandas as pd

from bench.data.manifest import write_manifest
from bench.data.prepare.common import BadAudioLog, CorpusLayoutError, existing_folder, probe_files
from bench.data.task_types import split_of_fold
from bench.paths import prepared_dir

log = logging.getLogger("avbench.prepare.iemocap")

NAME = "iemocap"
KEPT = {"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry"}
DROPPED = ("fru", "sur", "fea", "oth", "dis", "xxx")
COLUMNS = ["clip_id", "audio_path", "label", "speaker", "split", "num_samples", "sample_rate", "emotion",
           "emotion_code", "session", "gender", "dialog", "improvised", "valence", "arousal", "dominance", "fold"]
_SESSION = re.compile(r"^Session(\d)$")
_LABEL_LINE = re.compile(r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(\S+)\s+(\S+)\s+"
                         r"\[\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*\]\s*$")


def _fix_hint() -> str:
    return ("Pass the IEMOCAP_full_release folder (holding Session1/ ... Session5/, each with "
            "sentences/wav/ and dialog/EmoEvaluation/); re-extract the archive if it is incomplete.")


def parse_emo_evaluation(path: Path, session: int) -> list[dict]:
    """The labelled utterances of one EmoEvaluation file, checked against its dialogue and session."""
    dialog = path.stem
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.startswith("["):
            continue
        match = _LABEL_LINE.match(line)
        if not match:
            raise CorpusLayoutError(f"{path}:{lineno}: expected '[START - END]<TAB>UTTERANCE<TAB>EMOTION<TAB>"
                                    f"[V, A, D]', got {line.strip()!r}. Restore the file from the release.")
        utterance, code = match.group(3), match.group(4)
        gender = utterance.rsplit("_", 1)[-1][:1]
        if not utterance.startswith(f"{dialog}_") or gender not in ("F", "M") \
                or not utterance.startswith(f"Ses{session:02d}"):
            raise CorpusLayoutError(f"{path}:{lineno}: utterance {utterance!r} does not belong to dialogue "
                                    f"{dialog} of Session{session} (expected {dialog}_F000 or _M000 style ids).")
        if code not in KEPT and code not in DROPPED:
            raise CorpusLayoutError(f"{path}:{lineno}: unknown emotion {code!r}; IEMOCAP uses "
                                    f"{', '.join(list(KEPT) + list(DROPPED))}.")
        out.append({"utterance": utterance, "code": code, "gender": gender, "dialog": dialog,
                    "vad": tuple(float(match.group(k)) for k in (5, 6, 7))})
    return out


def prepare_iemocap(root: str | Path, out_dir: str | Path | None = None, *, on_bad_audio: str = "error",
                    progress: bool = True, workers: int | None = None) -> Path:
    """Write the 4-class manifest of a local IEMOCAP copy; return the path of manifest.csv.

    - clip_id: the utterance id; label and emotion: neutral, happy (hap and exc), sad, angry;
      emotion_code: the EmoEvaluation label (neu, hap, exc, sad, ang); speaker: Ses01F etc.;
      session and fold: 1..5; gender; dialog; improvised (impro vs script dialogue); valence,
      arousal, dominance; audio_path: absolute.
    - A labelled utterance (of a kept class) without its wav is an error: the extraction is
      incomplete. Wavs without a label line are ignored and listed under `ignored_files`.
    - Bad files follow `on_bad_audio` ('error' stops naming the file, 'skip' lists it in the meta).

    `out_dir` defaults to bench.paths.prepared_dir("iemocap").
    """
    bad = BadAudioLog(on_bad_audio)
    root, sessions = _sessions(root)
    clips: list[tuple[Path, dict]] = []
    dropped: dict[str, int] = {}
    ignored: list[str] = []
    seen: set[str] = set()
    for session in sessions:
        session_clips, session_ignored = _session_clips(root, session, seen, dropped)
        clips.extend(session_clips)
        ignored.extend(session_ignored)
    if ignored:
        log.warning("iemocap: %d wav file(s) have no EmoEvaluation label and are ignored, e.g. %s",
                    len(ignored), ignored[0])
    if dropped:
        log.info("iemocap: leaving out utterances outside the 4 classes: %s", dict(sorted(dropped.items())))
    if not clips:
        raise CorpusLayoutError(f"{root}: no utterance is labelled neu, hap, exc, sad or ang. {_fix_hint()}")

    split_of = split_of_fold(sessions, sessions[0])
    probed = probe_files([path for path, _ in clips], bad, workers=workers, progress=progress,
                         desc=f"probing {NAME}")
    rows = [_row(path, utt, result, split_of[utt["session"]])
            for (path, utt), result in zip(clips, probed) if result is not None]
    log.info("%s: %s", NAME, bad.report())
    table = pd.DataFrame(rows, columns=COLUMNS)
    meta = {
        "name": NAME,
        "source": str(root),
        "sessions": sessions,
        "fold_rule": "fold = session (leave-one-session-out); split column = first session test, next valid",
        "emotion_codes": KEPT,
        "dropped_labels": dict(sorted(dropped.items())),
        "skipped_files": bad.skipped,
        "ignored_files": ignored,
        "labels": sorted(table["label"].unique().tolist()),
    }
    out = Path(out_dir).expanduser() if out_dir is not None else prepared_dir(NAME)
    return write_manifest(table, out, meta)


def _sessions(root: str | Path) -> tuple[Path, list[int]]:
    """The resolved corpus root and its session numbers (at least 3, for train, valid and test)."""
    root = existing_folder(root, _fix_hint())
    root = root.resolve()
    sessions = sorted(int(m.group(1)) for e in os.scandir(root) if e.is_dir() and (m := _SESSION.match(e.name)))
    if len(sessions) < 3:
        raise CorpusLayoutError(f"{root}: found {len(sessions)} Session folder(s) {sessions}; leave-one-session-out "
                                f"needs at least 3 (train, valid, test). {_fix_hint()}")
    return root, sessions


def _session_clips(root: Path, session: int, seen: set[str],
                   dropped: dict[str, int]) -> tuple[list[tuple[Path, dict]], list[str]]:
    """One session's (wav, utterance) pairs of the kept classes, and its unlabelled wavs (relative
    to root). `seen` collects utterance ids across sessions (an id labelled twice is an error) and
    `dropped` counts the utterances of other classes per code."""
    base = root / f"Session{session}"
    labels_dir, wav_dir = base / "dialog" / "EmoEvaluation", base / "sentences" / "wav"
    for folder in (labels_dir, wav_dir):
        if not folder.is_dir():
            raise CorpusLayoutError(f"{folder}: missing. {_fix_hint()}")
    label_files = sorted(p for p in labels_dir.glob("*.txt") if not p.name.startswith("."))
    if not label_files:
        raise CorpusLayoutError(f"{labels_dir}: no EmoEvaluation .txt files. {_fix_hint()}")
    clips: list[tuple[Path, dict]] = []
    labelled: set[str] = set()
    for label_file in label_files:
        for utt in parse_emo_evaluation(label_file, session):
            if utt["utterance"] in seen:
                raise CorpusLayoutError(f"{label_file}: utterance {utt['utterance']} is labelled twice.")
            seen.add(utt["utterance"])
            labelled.add(utt["utterance"])
            if utt["code"] not in KEPT:
                dropped[utt["code"]] = dropped.get(utt["code"], 0) + 1
                continue
            wav = wav_dir / utt["dialog"] / f"{utt['utterance']}.wav"
            if not wav.is_file():
                raise CorpusLayoutError(f"{wav}: missing, but {label_file.name} labels {utt['utterance']}. "
                                        f"{_fix_hint()}")
            clips.append((wav, {**utt, "session": session}))
    ignored = [p.relative_to(root).as_posix() for p in sorted(wav_dir.glob("*/*.wav"))
               if not p.name.startswith(".") and p.stem not in labelled]
    return clips, ignored


def _row(path: Path, utt: dict, probed: tuple[int, int], split: str) -> dict:
    """One utterance's manifest row; `probed` is (num_samples, sample_rate)."""
    session = utt["session"]
    return {
        "clip_id": utt["utterance"], "audio_path": str(path), "label": KEPT[utt["code"]],
        "speaker": f"Ses{session:02d}{utt['gender']}", "split": split, "num_samples": probed[0],
        "sample_rate": probed[1], "emotion": KEPT[utt["code"]], "emotion_code": utt["code"],
        "session": session, "gender": "female" if utt["gender"] == "F" else "male", "dialog": utt["dialog"],
        "improvised": "_impro" in utt["dialog"], "valence": utt["vad"][0], "arousal": utt["vad"][1],
        "dominance": utt["vad"][2], "fold": session,
    }
