"""`avbench tables` takes the pretraining budget and wall time from the pretraining records beside the
run records (runs.jsonl -> runs.pretraining.jsonl): the README's table of pretraining runs and the
note under each results.md table with checkpointed rows. No training: records written by hand."""

from __future__ import annotations

import json

import pytest

from bench.errors import ConfigError
from bench.records import pretraining_records_path
from bench.results.pretraining import trained_text
from bench.results.write import write_tables
from test_tables import make_record

APC_HASH, APC_IDENTITY = "f05044e0cb00fa0f", "30d1f0574e9523c9"


def pretraining_record(identity: str = APC_IDENTITY, *, status: str = "ok", **extra) -> dict:
    """A pretraining record as bench.pretrain.stage appends it."""
    record = {
        "kind": "pretraining", "status": status, "identity": identity, "name": "apc-b8", "encoder": "apc",
        "settings": {"batch_size": 8, "crop_seconds": 1.0, "data": "embedded:default", "encoder": "apc",
                     "encoder_kwargs": {}, "epochs": None, "lr": None, "max_grad_norm": 10.0, "pretext_kwargs": {},
                     "seed": 0, "splits": ["train"], "steps": 400},
        "objective_version": 1, "manifest_id": "39340193f535afe8", "data_name": "embedded-f6b63032867a",
        "clips": 8640, "step": 400, "total_steps": 400, "seconds": 1234.4, "seconds_this_call": 1234.4,
        "resumed": False, "final_loss": 0.520928, "final_losses": None, "device": "cuda",
        "device_name": "NVIDIA H200", "precision": "bf16", "checkpoint_hash": APC_HASH,
        "checkpoint_sha256": APC_HASH + "0" * 48, "weights_sha256": None, "path": f"/data/pretrained/{identity}",
        "git_commit": "125e47f3da04424bd912ae47bdd3d71d979600f9", "avbench_version": "0.1.0",
    }
    if status == "failed":
        record["error"] = "CUDA out of memory"
    record.update(extra)
    return record


def write_records(tmp_path, records, pretraining=None):
    for i, record in enumerate(records):
        record["config_hash"] = f"hash{i}"
    records_path = tmp_path / "runs.jsonl"
    records_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    if pretraining is not None:
        pretraining_records_path(records_path).write_text("".join(json.dumps(r) + "\n" for r in pretraining))
    return records_path


def pretraining_rows(readme: str) -> list[str]:
    return [line for line in readme.split("## Pretraining runs", 1)[1].splitlines() if line.startswith("| apc")]


def test_the_readme_row_takes_budget_wall_hash_and_evaluated_by_from_the_pretraining_records(tmp_path):
    records = [make_record("apc@f05044e0", seed=s, checkpoint_hash=APC_HASH) for s in range(2)]
    records += [make_record("apc@f05044e0", seed=2, checkpoint_hash=None, pretraining_identity=APC_IDENTITY),
                make_record("mfcc39"), make_record("av-joint@0badc0de", checkpoint_hash="0badc0de00000000")]
    kept = tmp_path / "pretraining" / "apc-b8"
    kept.mkdir(parents=True)
    (kept / "loss.csv").write_text("step,loss\n" + "".join(f"{5 * i},{1.0 - 0.01 * i}\n" for i in range(1, 21)))
    (kept / "pretrain.json").write_text("{}")  # no longer read: the record is the source
    (tmp_path / "pretraining" / "old-run").mkdir()
    pretraining = [pretraining_record(files="pretraining/apc-b8"),
                   pretraining_record("deadbeefdeadbeef", status="failed", name="wav2vec-b8")]
    write_tables(write_records(tmp_path, records, pretraining), tmp_path)
    readme = (tmp_path / "README.md").read_text()
    [row] = pretraining_rows(readme)
    assert f"`{APC_IDENTITY}` | apc | embedded-f6b63032867a (manifest 39340193f535afe8)" in row
    assert "| 400 steps x batch 8, 1 s crops (0.37 epochs) | 1,234 s on NVIDIA H200, bf16 | 0.5209 (-18.3%) |" in row
    assert f"| `{APC_HASH}` | 3 record(s) |" in row
    assert "[loss.csv](pretraining/apc-b8/loss.csv)" in row and "[pretrain.json](pretraining/apc-b8/pretrain.json)" in row
    assert "1 failed pretraining attempt(s): `deadbeefdeadbeef`: CUDA out of memory." in readme
    assert "1 folder(s) under pretraining/ named by no pretraining record" in readme
    assert "[old-run](pretraining/old-run)" in readme and "[apc-b8](pretraining/apc-b8)" not in readme


def test_an_identity_recorded_twice_is_shown_once_from_its_latest_ok_record(tmp_path):
    records = [make_record("apc@f05044e0", checkpoint_hash=APC_HASH)]
    pretraining = [pretraining_record(step=200, seconds=600.0, device_name=None, device="cpu", precision="fp32"),
                   pretraining_record(resumed=True),  # the killed build, resumed to its end
                   pretraining_record(status="failed")]  # a later rebuild elsewhere that failed
    write_tables(write_records(tmp_path, records, pretraining), tmp_path)
    readme = (tmp_path / "README.md").read_text()
    [row] = pretraining_rows(readme)
    assert f"`{APC_IDENTITY}` (3 records)" in row and "1,234 s on NVIDIA H200, bf16" in row
    assert "600 s" not in readme and "1 failed pretraining attempt(s)" in readme


def test_a_malformed_pretraining_line_is_an_error_naming_the_file_and_line(tmp_path):
    records_path = write_records(tmp_path, [make_record("mfcc39")])
    write_tables(records_path, tmp_path / "none")  # no pretraining records: no section, no error
    assert "## Pretraining runs" not in (tmp_path / "none" / "README.md").read_text()
    sidecar = pretraining_records_path(records_path)
    assert sidecar.name == "runs.pretraining.jsonl"
    sidecar.write_text(json.dumps(pretraining_record()) + "\n\n" + '{"kind": "pretraining", "ident\n')
    with pytest.raises(ConfigError, match=r"runs\.pretraining\.jsonl:3: malformed pretraining record .*fix or remove"):
        write_tables(records_path, tmp_path)
    sidecar.write_text(json.dumps(pretraining_record()) + "\n" + json.dumps(make_record("apc")) + "\n")
    with pytest.raises(ConfigError, match=r"runs\.pretraining\.jsonl:2: not a pretraining record .*fix or remove"):
        write_tables(records_path, tmp_path)


def test_results_md_notes_the_pretraining_behind_each_checkpointed_row(tmp_path):
    records = [make_record("apc@f05044e0", seed=s, checkpoint_hash=APC_HASH) for s in range(2)]
    records += [make_record("apc@f05044e0", mode="finetune", checkpoint_hash=APC_HASH),
                make_record("av-joint@0badc0de", checkpoint_hash="0badc0de00000000"), make_record("mfcc39")]
    records_path = write_records(tmp_path, records)
    write_tables(records_path, tmp_path / "without")
    pretraining_records_path(records_path).write_text(json.dumps(pretraining_record()) + "\n")
    write_tables(records_path, tmp_path / "with")
    md = (tmp_path / "with" / "results.md").read_text()
    note = md.split("\nPretraining:\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert note == ["- av-joint@0badc0de: no pretraining record",  # rows in table order: proposed first
                    "- apc@f05044e0: 400 steps x batch 8, 1 s crops (0.37 epochs); 1,234 s on NVIDIA H200, bf16 "
                    "(apc-b8)"]
    assert md.count("\nPretraining:\n") == 1
    for name in ("results.csv", "results.tex"):  # the pretraining records change only the notes
        assert (tmp_path / "with" / name).read_bytes() == (tmp_path / "without" / name).read_bytes()
    write_tables(records_path, tmp_path / "again")
    assert (tmp_path / "again" / "results.md").read_bytes() == md.encode()


def test_two_builds_of_one_identity_that_differ_in_their_bits_are_two_checkpoints(tmp_path):
    """A rebuild on a machine that did not reproduce the recorded checkpoint (another CPU, another
    thread count) is another checkpoint of the same identity: its own row, its own runs."""
    other = "82f3b9b7d3bd4ab5"
    records = [make_record("apc@f05044e0", seed=s, checkpoint_hash=APC_HASH) for s in range(2)]
    records.append(make_record("apc@82f3b9b7", checkpoint_hash=other, pretraining_identity=APC_IDENTITY))
    pretraining = [pretraining_record(), pretraining_record(checkpoint_hash=other, seconds=845.0)]
    write_tables(write_records(tmp_path, records, pretraining), tmp_path)
    rows = pretraining_rows((tmp_path / "README.md").read_text())
    assert len(rows) == 2
    assert any(f"`{APC_HASH}` | 2 record(s)" in row for row in rows)
    assert any(f"`{other}` | 1 record(s)" in row and "845 s" in row for row in rows)
    note = (tmp_path / "results.md").read_text()
    assert "apc@f05044e0: 400 steps x batch 8" in note and "1,234 s" in note and "no pretraining record" not in note


def test_word_labels_read_as_words_wherever_a_pretraining_is_named():
    """The manifests' `label` column is the spoken word; the report's setup and limitations both say so."""
    supervised = {"encoder": "resnet18", "objective": "supervised"}
    assert trained_text({**supervised, "labels": "label"}) == "resnet18 + supervised (labels: words)"
    assert trained_text({**supervised, "labels": "speaker"}) == "resnet18 + supervised (labels: speaker)"
    assert trained_text({"encoder": "apc", "objective": "apc"}) == "apc"
