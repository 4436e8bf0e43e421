"""Google Speech Commands (v0.01 and v0.02) into an avbench manifest.

The extracted archive looks like::

    ROOT/
      bed/0a7c2a8d_nohash_0.wav ...       one folder per word, SPEAKERHASH_nohash_N.wav
      validation_list.txt                 "bed/0a7c2a8d_nohash_0.wav" lines -> split valid
      testing_list.txt                    same -> split test; every other clip is train
      _background_noise_/*.wav            long noise recordings: not clips, listed in the meta

The official lists are the only split anyone reports numbers on, so they are required, not guessed.
The version is detected from the word folders (v0.01: 30 words, v0.02: those plus backward, follow,
forward, learn, visual) because the two versions share file names but not label sets, and mixing
them up would make results incomparable.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from bench.data.manifest import write_manifest
from bench.data.prepare.common import BadAudioLog, CorpusLayoutError, existing_folder, probe_files
from bench.paths import prepared_dir

log = logging.getLogger("avbench.prepare.spc")

V001_WORDS = ("bed", "bird", "cat", "dog", "down", "eight", "five", "four", "go", "happy", "house",
              "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven", "sheila", "six",
              "stop", "three", "tree", "two", "up", "wow", "yes", "zero")
V002_EXTRA_WORDS = ("backward", "follow", "forward", "learn", "visual")
V002_WORDS = tuple(sorted(V001_WORDS + V002_EXTRA_WORDS))

NOISE_FOLDER = "_background_noise_"
VALIDATION_LIST = "validation_list.txt"
TESTING_LIST = "testing_list.txt"
SPEAKER_SEPARATOR = "_nohash_"


def _fix_hint() -> str:
    return (f"Pass the extracted Speech Commands folder (the one holding yes/, no/, ..., "
            f"{VALIDATION_LIST} and {TESTING_LIST}); re-extract the archive if it is incomplete.")


def detect_version(word_folders: list[str], root: Path) -> str:
    """'v0.01' or 'v0.02' from the set of word folders; CorpusLayoutError if it is neither.

    The complete word set is required: a partial corpus would silently change the label set and
    make accuracies incomparable with every published number.
    """
    names = set(word_folders)
    unknown = sorted(names - set(V002_WORDS))
    if unknown:
        raise CorpusLayoutError(
            f"{root}: folder(s) {', '.join(unknown)} are not Speech Commands words (v0.01 has "
            f"{len(V001_WORDS)} words, v0.02 adds {', '.join(V002_EXTRA_WORDS)}). Move them out of "
            f"{root}, or prefix them with '_' to have them ignored.")
    if names & set(V002_EXTRA_WORDS):
        version, expected = "v0.02", set(V002_WORDS)
    else:
        version, expected = "v0.01", set(V001_WORDS)
    missing = sorted(expected - names)
    if missing:
        raise CorpusLayoutError(
            f"{root}: looks like Speech Commands {version} but the word folder(s) "
            f"{', '.join(missing)} are missing. {_fix_hint()}")
    return version


def _read_list(root: Path, name: str) -> list[str]:
    """Entries of an official split list as 'word/file.wav' (forward slashes, no blanks)."""
    path = root / name
    if not path.is_file():
        raise CorpusLayoutError(
            f"{path}: split list missing. Speech Commands ships {VALIDATION_LIST} and {TESTING_LIST} "
            f"beside the word folders; copy them from the original archive into {root}.")
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip().replace("\\", "/")
        if line:
            entries.append(line[2:] if line.startswith("./") else line)
    return entries


def _scan(root: Path, words: list[str]) -> tuple[list[tuple[str, Path]], list[str]]:
    """(word, wav path) of every clip, plus wavs that sit outside any word folder (ignored)."""
    clips: list[tuple[str, Path]] = []
    ignored: list[str] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_file() and entry.name.lower().endswith(".wav"):
            ignored.append(entry.name)
    for word in words:
        folder = root / word
        found = 0
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.is_file() and entry.name.lower().endswith(".wav"):
                clips.append((word, Path(entry.path)))
                found += 1
            elif entry.is_dir():
                ignored.extend(f"{word}/{p.relative_to(folder).as_posix()}"
                               for p in sorted(Path(entry.path).rglob("*.wav")))
        if not found:
            raise CorpusLayoutError(f"{folder}: the word folder holds no .wav files. {_fix_hint()}")
    return clips, ignored


def prepare_spc(root: str | Path, out_dir: str | Path | None = None, *, on_bad_audio: str = "error",
                progress: bool = True, workers: int | None = None) -> Path:
    """Write the manifest of a local Speech Commands copy; return the path of manifest.csv.

    - split: listed in testing_list.txt -> test, in validation_list.txt -> valid, else train.
    - speaker: the hash before `_nohash_`; clip_id: "word/filestem"; label: the word;
      audio_path: absolute (the corpus stays where the user keeps it).
    - num_samples/sample_rate: of the audio as bench.data.audio.load_audio returns it (16 kHz mono),
      found by fully loading every file through probe_audio, so empty, corrupt, NaN and silent
      files are caught here rather than half way through a training run.
    - Bad files follow `on_bad_audio`: 'error' stops at the first, naming it; 'skip' leaves them
      out and lists them in the meta under `skipped_files`.
    - Wavs that are not directly inside a word folder (at the top level, or in a subfolder of a
      word folder) are not part of the corpus: they are ignored, logged, and listed in the meta
      under `ignored_files`, rather than failing a run over a stray file.
    - `_background_noise_/*.wav` are listed (absolute paths) in the meta as `noise_sources`.
    - Folders whose name starts with '_' or '.' are not word folders; any other folder that is not
      a Speech Commands word is an error, as is a split list naming a file that does not exist.

    `out_dir` defaults to bench.paths.prepared_dir("spc-v0.01"/"spc-v0.02"). `workers` is the
    number of processes that read audio (default: one for small trees, else up to 8 cores).
    """
    root, words = _word_folders(root)
    version = detect_version(words, root)
    name = f"spc-{version}"

    validation = _read_list(root, VALIDATION_LIST)
    testing = _read_list(root, TESTING_LIST)
    clips, ignored = _scan(root, words)
    if ignored:
        log.warning("ignoring %d wav file(s) outside the word folders of %s, e.g. %s",
                    len(ignored), root, ignored[0])
    rel_paths = [f"{word}/{path.name}" for word, path in clips]
    split_of = _split_of(root, rel_paths, validation, testing)
    _check_speaker_naming(root, rel_paths)

    bad = BadAudioLog(on_bad_audio)
    probed = probe_files([path for _, path in clips], bad, workers=workers, progress=progress,
                         desc=f"probing {name}")
    rows = []
    for (word, path), rel, result in zip(clips, rel_paths, probed):
        if result is None:
            continue
        num_samples, sample_rate = result
        rows.append({
            "clip_id": f"{word}/{path.stem}",
            "audio_path": str(path),
            "label": word,
            "speaker": path.stem.split(SPEAKER_SEPARATOR, 1)[0],
            "split": split_of.get(rel, "train"),
            "num_samples": num_samples,
            "sample_rate": sample_rate,
        })
    log.info("%s: %s", name, bad.report())

    table = pd.DataFrame(rows, columns=["clip_id", "audio_path", "label", "speaker", "split",
                                        "num_samples", "sample_rate"])
    meta = {
        "name": name,
        "version": version,
        "source": str(root),
        "noise_sources": _noise_sources(root),
        "skipped_files": bad.skipped,
        "ignored_files": ignored,
        "labels": sorted(table["label"].unique().tolist()),
    }
    out = Path(out_dir).expanduser() if out_dir is not None else prepared_dir(name)
    return write_manifest(table, out, meta)


def _word_folders(root: str | Path) -> tuple[Path, list[str]]:
    """The resolved corpus root and its word folders' names (sorted)."""
    root = existing_folder(root, _fix_hint())
    root = root.resolve()
    words = sorted(e.name for e in os.scandir(root)
                   if e.is_dir() and not e.name.startswith(("_", ".")))
    if not words:
        raise CorpusLayoutError(f"{root}: no word folders (yes/, no/, ...) found. {_fix_hint()}")
    return root, words


def _split_of(root: Path, rel_paths: list[str], validation: list[str],
              testing: list[str]) -> dict[str, str]:
    """"word/file.wav" -> "valid" or "test" from the two split lists (any other file is train),
    after checking that the lists name existing files and do not overlap."""
    known = set(rel_paths)
    for list_name, entries in ((VALIDATION_LIST, validation), (TESTING_LIST, testing)):
        absent = [e for e in entries if e not in known]
        if absent:
            raise CorpusLayoutError(
                f"{root / list_name}: names {len(absent)} file(s) that do not exist under {root}, "
                f"first: {absent[0]}. The list and the audio come from different versions, or the "
                "extraction is incomplete; re-extract both from the same archive.")
    both = sorted(set(validation) & set(testing))
    if both:
        raise CorpusLayoutError(
            f"{root}: {len(both)} file(s) are in both {VALIDATION_LIST} and {TESTING_LIST}, first: "
            f"{both[0]}. Restore the original lists from the archive.")
    split_of = {e: "valid" for e in validation}
    split_of.update({e: "test" for e in testing})
    return split_of


def _check_speaker_naming(root: Path, rel_paths: list[str]) -> None:
    """Every clip's file name must carry its speaker (SPEAKER_nohash_N.wav)."""
    unnamed = [rel for rel in rel_paths if SPEAKER_SEPARATOR not in rel.rsplit("/", 1)[1]]
    if unnamed:
        raise CorpusLayoutError(
            f"{root}: {len(unnamed)} wav file(s) do not follow the SPEAKER{SPEAKER_SEPARATOR}N.wav "
            f"naming, first: {unnamed[0]}. Move files that are not part of Speech Commands out of "
            "the word folders.")


def _noise_sources(root: Path) -> list[str]:
    """The absolute paths of _background_noise_/*.wav (a warning when there are none)."""
    noise_dir = root / NOISE_FOLDER
    noise_sources = sorted(str(p) for p in noise_dir.glob("*.wav")) if noise_dir.is_dir() else []
    if not noise_sources:
        log.warning("%s: no %s/*.wav found; noise augmentation will have no sources",
                    root, NOISE_FOLDER)
    return noise_sources
