"""Label maps: each corpus's emotion labels mapped into one shared space for cross-dataset runs.

A map is a YAML file (bench/data/prepare/label_maps/, or a path) with the shared labels and, per
corpus, its labels -> a shared label or null (dropped, and counted per original label).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from bench.data.manifest import Manifest
from bench.errors import ConfigError

log = logging.getLogger("avbench.task_types")

LABEL_MAP_DIR = Path(__file__).parent / "prepare" / "label_maps"


@dataclass(frozen=True)
class LabelMap:
    """A shared label space and, per corpus, its labels -> a shared label (None: dropped)."""

    source: Path
    shared: tuple[str, ...]
    corpora: dict[str, dict[str, str | None]]


def load_label_map(spec: str | Path) -> LabelMap:
    """Read a label map: a YAML file, or the name of one in bench/data/prepare/label_maps ("emotion").

    Format: `shared: [labels]` and `corpora: {corpus name: {corpus label: shared label or null}}`.
    """
    path = Path(spec)
    if not path.suffix and (LABEL_MAP_DIR / f"{spec}.yaml").is_file():
        path = LABEL_MAP_DIR / f"{spec}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in LABEL_MAP_DIR.glob("*.yaml"))
        raise ConfigError(f"label map {str(spec)!r}: no such file, and not one of the shipped maps "
                          f"({', '.join(shipped)})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("shared"), list) or not isinstance(data.get("corpora"), dict):
        raise ConfigError(f"{path}: a label map needs 'shared' (a list of labels) and 'corpora' (corpus name -> "
                          "{corpus label: shared label or null})")
    shared = tuple(str(x) for x in data["shared"])
    if not shared or len(set(shared)) != len(shared):
        raise ConfigError(f"{path}: 'shared' must list distinct labels, got {list(shared)}")
    corpora: dict[str, dict[str, str | None]] = {}
    for corpus, entry in data["corpora"].items():
        if not isinstance(entry, dict) or not entry:
            raise ConfigError(f"{path}: corpora.{corpus} must map that corpus's labels to shared labels")
        for key, target in entry.items():
            if not isinstance(key, str):
                raise ConfigError(f"{path}: corpora.{corpus}: label {key!r} must be a string; quote codes "
                                  "such as '01' (YAML reads 01 as the number 1)")
            if target is not None and target not in shared:
                raise ConfigError(f"{path}: corpora.{corpus}.{key} maps to {target!r}, which is not in shared "
                                  f"{list(shared)}; use one of them, or null to drop the label")
        corpora[str(corpus)] = dict(entry)
    return LabelMap(path, shared, corpora)


def corpus_key(manifest: Manifest) -> str:
    """The name a label map knows a manifest's corpus by: 'embedded' or manifest.json's name."""
    if manifest.meta.get("kind") == "embedded":
        return "embedded"
    name = manifest.meta.get("name")
    if not name:
        raise ConfigError(f"{manifest.path}: manifest.json names no corpus, so no label map entry applies. "
                          "Re-run the preparer.")
    return str(name)


def apply_label_map(table: pd.DataFrame, label_map: LabelMap, corpus: str,
                    source: str | Path) -> tuple[pd.DataFrame, dict[str, int]]:
    """(rows kept with `emotion` in the shared space, dropped rows per original label).

    The map's keys are matched against `emotion_code` (the label as the corpus spells it, written
    by the real-corpus preparers) where the table has it, else against `emotion`. A label the map
    does not list is an error: dropping it silently would change the task unnoticed. The
    original value is kept in `emotion_original`.
    """
    if corpus not in label_map.corpora:
        raise ConfigError(f"{label_map.source}: no entry for corpus {corpus!r} ({source}); it maps "
                          f"{', '.join(sorted(label_map.corpora))}. Add one under 'corpora'.")
    entry = label_map.corpora[corpus]
    column = "emotion_code" if "emotion_code" in table.columns else "emotion"
    values = table[column].astype(str)
    unknown = sorted(set(values) - set(entry))
    if unknown:
        raise ConfigError(f"{source}: {column} value(s) {unknown} of corpus {corpus!r} are not in "
                          f"{label_map.source}; add them under corpora.{corpus} (a shared label, or null to drop).")
    mapped = values.map(entry)
    keep = mapped.notna()
    dropped = {str(k): int(v) for k, v in values[~keep].value_counts().sort_index().items()}
    if dropped:
        log.info("%s: label map drops %d clip(s): %s", source, int((~keep).sum()), dropped)
    out = table[keep].copy()
    out["emotion_original"] = out[column]
    out["emotion"] = mapped[keep]
    return out, dropped
