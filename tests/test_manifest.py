"""bench.data.manifest: the one manifest format round-trips and refuses bad tables by name."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from bench.data.manifest import (MANIFEST_NAME, META_NAME, REQUIRED_COLUMNS, ManifestError, read_manifest,
                                 summarize, write_manifest)


def make_table(n: int = 6) -> pd.DataFrame:
    splits = ["train", "train", "train", "valid", "test", "test"]
    return pd.DataFrame({
        "clip_id": [f"one/{i:04d}" for i in range(n)],
        "audio_path": [f"audio/{i:04d}.wav" for i in range(n)],
        "label": ["one", "two"] * (n // 2),
        # Numeric-looking strings must stay strings (leading zeros are part of the id).
        "speaker": ["0042", "007"] * (n // 2),
        "split": [splits[i % len(splits)] for i in range(n)],
        "num_samples": [16_000 + i for i in range(n)],
        "sample_rate": [16_000] * n,
    })


def test_round_trip(tmp_path: Path) -> None:
    table = make_table()
    table["emotion"] = ["neutral"] * len(table)
    table["extra_score"] = [0.5] * len(table)
    path = write_manifest(table.iloc[::-1], tmp_path / "m", {"name": "toy", "source": "here"})
    assert path == tmp_path / "m" / MANIFEST_NAME
    manifest = read_manifest(tmp_path / "m")  # a folder is accepted as well as the csv
    t = manifest.table
    assert list(t.columns[: len(REQUIRED_COLUMNS)]) == list(REQUIRED_COLUMNS)
    assert list(t.columns[len(REQUIRED_COLUMNS):]) == ["emotion", "extra_score"]
    assert list(t["clip_id"]) == sorted(table["clip_id"])  # written sorted by clip_id
    assert manifest.speakers == ["0042", "007"]
    assert manifest.labels == ["one", "two"]
    assert t["num_samples"].dtype == "int64"
    assert list(t["num_samples"]) == list(table["num_samples"])
    assert manifest.meta["name"] == "toy"
    assert manifest.meta["num_clips"] == 6
    assert manifest.meta["counts"] == {"train": 3, "valid": 1, "test": 2}
    assert len(manifest.split("test")) == 2
    with pytest.raises(ValueError, match="unknown split"):
        manifest.split("dev")
    assert "toy" in summarize(manifest)


def test_missing_column(tmp_path: Path) -> None:
    table = make_table().drop(columns=["speaker"])
    with pytest.raises(ManifestError, match="missing required column.*speaker") as exc:
        write_manifest(table, tmp_path)
    assert MANIFEST_NAME in str(exc.value)
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_missing_column_in_file_on_disk(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_NAME
    make_table().drop(columns=["label"]).to_csv(path, index=False)
    with pytest.raises(ManifestError, match="label") as exc:
        read_manifest(path)
    assert str(path) in str(exc.value)


def test_bad_split_value(tmp_path: Path) -> None:
    table = make_table()
    table.loc[2, "split"] = "dev"
    with pytest.raises(ManifestError, match=r"split.*'dev'"):
        write_manifest(table, tmp_path)


def test_duplicate_clip_id(tmp_path: Path) -> None:
    table = make_table()
    table.loc[3, "clip_id"] = table.loc[1, "clip_id"]
    with pytest.raises(ManifestError, match="one/0001.*more than once"):
        write_manifest(table, tmp_path)


@pytest.mark.parametrize("value", [1.5, "abc", -3, 0])
def test_non_integer_or_non_positive_num_samples(tmp_path: Path, value: object) -> None:
    table = make_table().astype({"num_samples": object})
    table.loc[4, "num_samples"] = value
    with pytest.raises(ManifestError, match="num_samples.*positive integers"):
        write_manifest(table, tmp_path)


def test_empty_value_in_required_column(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_NAME
    table = make_table()
    table.loc[2, "speaker"] = ""
    table.to_csv(path, index=False)
    with pytest.raises(ManifestError, match="'speaker' is empty in 1 row.*row 3"):
        read_manifest(path)


def test_empty_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no rows"):
        write_manifest(make_table().iloc[:0], tmp_path)
    path = tmp_path / MANIFEST_NAME
    path.write_text(",".join(REQUIRED_COLUMNS) + "\n")
    with pytest.raises(ManifestError, match="no rows"):
        read_manifest(path)


def test_missing_manifest_and_bad_sidecar(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest here"):
        read_manifest(tmp_path / "nowhere")
    write_manifest(make_table(), tmp_path)
    (tmp_path / META_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match=META_NAME):
        read_manifest(tmp_path)


def test_relative_paths_resolve_against_manifest_folder(tmp_path: Path) -> None:
    table = make_table()
    absolute = str(tmp_path / "elsewhere" / "x.wav")
    table.loc[0, "audio_path"] = absolute
    write_manifest(table, tmp_path / "corpus")
    moved = tmp_path / "moved"
    (tmp_path / "corpus").rename(moved)  # a built corpus can be moved as a whole
    manifest = read_manifest(moved / MANIFEST_NAME)
    rows = manifest.table.set_index("clip_id")
    assert manifest.audio_path(rows.loc["one/0001"]) == moved / "audio" / "0001.wav"
    assert manifest.audio_path(rows.loc["one/0000"]) == Path(absolute)
    assert manifest.resolve("video/a.mp4") == moved / "video" / "a.mp4"


def test_manifest_id_changes_with_content(tmp_path: Path) -> None:
    table = make_table()
    first = read_manifest(write_manifest(table, tmp_path)).manifest_id
    again = read_manifest(write_manifest(table, tmp_path)).manifest_id
    assert first == again and len(first) == 16
    table.loc[0, "label"] = "three"
    changed = read_manifest(write_manifest(table, tmp_path)).manifest_id
    assert changed != first


def test_atomic_write_leaves_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_manifest(make_table(), tmp_path, {"name": "a"})
    assert sorted(os.listdir(tmp_path)) == [MANIFEST_NAME, META_NAME]
    before = (tmp_path / MANIFEST_NAME).read_bytes()

    # A failure at the moment of replacing must leave the previous manifest whole and no temp file.
    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    table = make_table()
    table.loc[0, "label"] = "changed"
    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_manifest(table, tmp_path, {"name": "b"})
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == [MANIFEST_NAME, META_NAME]
    assert (tmp_path / MANIFEST_NAME).read_bytes() == before
    assert json.loads((tmp_path / META_NAME).read_text())["name"] == "a"


@pytest.mark.parametrize("value", [float("inf"), True])
def test_infinite_or_boolean_sample_counts_are_refused(tmp_path: Path, value: object) -> None:
    table = make_table()
    table["num_samples"] = value
    with pytest.raises(ManifestError, match="num_samples"):
        write_manifest(table, tmp_path)


def test_hand_edited_csv_gets_counts_from_the_csv_not_the_stale_sidecar(tmp_path: Path, caplog) -> None:
    path = write_manifest(make_table(6), tmp_path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")  # a user drops the last clip by hand
    manifest = read_manifest(path)
    assert manifest.meta["num_clips"] == 5 == len(manifest.table)
    assert sum(manifest.meta["counts"].values()) == 5
    assert "describes a different version" in caplog.text


def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path):
    import os

    from bench.files import atomic_write_bytes

    atomic_write_bytes(tmp_path / "a.txt", b"x")
    (tmp_path / "b.txt").write_bytes(b"x")
    assert os.stat(tmp_path / "a.txt").st_mode == os.stat(tmp_path / "b.txt").st_mode
