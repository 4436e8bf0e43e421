"""Run identities and feature-cache keys are pinned: moving or splitting code must not change them.

A changed config hash makes every recorded run look new (a sweep re-runs it) and a changed cache
key orphans every cached feature, so both are pinned to values computed before the code moved,
and every run in the shipped records must still get the hash it was recorded under.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.data.feature_cache import FeatureCache
from bench.evaluate.identity import RunConfig, config_hash
from bench.records import read_records
from bench.registry import create_encoder

RECORDS = Path(__file__).resolve().parents[1] / "results" / "runs.jsonl"
EMBEDDED_DEFAULT = "39340193f535afe8"  # manifest id of `embedded:default` in the shipped records

PINNED_RUNS = [
    (dict(encoder="mfcc39", task="embedded:default"), EMBEDDED_DEFAULT, None, "33518aaaa943bdeb"),
    (dict(encoder="logmel", task="embedded:default", epochs=5, lr=1e-3, lr_drop_epoch=4, lr_after_drop=1e-4,
          label_fraction=0.05, seed=2), EMBEDDED_DEFAULT, None, "5bc7be6d0e970204"),
    (dict(encoder="av-joint@/somewhere/encoder.pt", task="embedded:default", mode="finetune", encoder_lr=1e-5),
     EMBEDDED_DEFAULT, "0123456789abcdef", "0e8bec5529ead0f8"),
    (dict(encoder="resnet18-scratch", task="embedded:default", mode="scratch", budget_steps=450, epochs=5),
     EMBEDDED_DEFAULT, None, "9a6d6c7a8561b35f"),
    (dict(encoder="mfcc39", task="embedded:default", task_type="speaker-verification", k_shot=5,
          eval_tasks=("embedded:small",)), "feedfacecafebeef", None, "3d35a1237025c562"),
]


@pytest.mark.parametrize("settings,manifest_id,checkpoint_hash,expected", PINNED_RUNS)
def test_config_hashes_are_pinned(settings, manifest_id, checkpoint_hash, expected):
    assert config_hash(RunConfig.from_dict(dict(settings)), manifest_id, checkpoint_hash) == expected


def test_every_shipped_record_keeps_its_config_hash():
    checked = 0
    for record in read_records(RECORDS):
        if record.get("status") != "ok":
            continue
        if record.get("eval_of"):  # a cross-task test: the run's hash and the eval manifest
            expected = hashlib.sha256(f"{record['eval_of']}:{record['manifest_id']}".encode()).hexdigest()[:16]
        else:
            expected = config_hash(RunConfig.from_dict(dict(record["config"])), record["manifest_id"],
                                   record.get("checkpoint_hash"))
        assert expected == record["config_hash"], record["encoder"]
        checked += 1
    assert checked >= 200  # 208 runs and 40 cross-task tests when this test was written


@pytest.mark.parametrize("encoder,preprocessing,expected", [
    ("mfcc39", None, "df66b2bb164680de4ba64119326196d9"),
    ("logmel", {"max_seconds": 1}, "d77d4bb9b204816fd584c60f819825b0"),
])
def test_feature_cache_keys_are_pinned(encoder, preprocessing, expected, tmp_path):
    manifest = SimpleNamespace(manifest_id=EMBEDDED_DEFAULT)  # the key reads only the manifest's id
    assert FeatureCache(tmp_path).key(create_encoder(encoder), manifest, preprocessing) == expected
