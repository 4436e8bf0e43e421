"""Pretraining as a stage (bench.pretrain.stage): identities that name what makes the weights,
checkpoints built once, resumed after a kill, and built once when two processes ask at once."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from bench.data.feature_cache import state_digest
from bench.pretrain import objective
from bench.pretrain.loop import PretrainConfig, pretrain
from bench.pretrain.stage import ensure_pretrained, pretrained_dir, pretraining_identity, weights_sha256

APC = {"num_layers": 1, "hidden_size": 16}


def _config(data: str, **changes) -> PretrainConfig:
    settings = dict(encoder="apc", data=data, steps=4, batch_size=4, encoder_kwargs=APC, save_every=2)
    return PretrainConfig(**{**settings, **changes})


@pytest.fixture
def own_data(tmp_path, monkeypatch):
    """A data folder of this test's own, so checkpoints built by other tests are never found."""
    monkeypatch.setenv("AVBENCH_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def test_the_identity_counts_what_makes_the_weights_and_nothing_else(tiny_corpus, monkeypatch):
    path = str(tiny_corpus.manifest.path)
    base = pretraining_identity(_config(path), "m", 4)
    same = [_config(path, log_every=1), _config(path, save_every=3), _config(path, loader_workers=2),
            _config(str(tiny_corpus.path))]  # the folder instead of the manifest file: the same manifest
    assert all(pretraining_identity(c, "m", 4) == base for c in same)
    other = [_config(path, seed=1), _config(path, lr=1e-4), _config(path, batch_size=2),
             _config(path, encoder_kwargs={"num_layers": 2, "hidden_size": 16}), _config(path, precision="bf16")]
    assert len({pretraining_identity(c, "m", 4) for c in other} | {base}) == len(other) + 1
    assert pretraining_identity(_config(path), "other-manifest", 4) != base
    assert pretraining_identity(_config(path), "m", 5) != base
    monkeypatch.setitem(objective._VERSIONS, "apc", 2)  # the objective's maths changed
    assert pretraining_identity(_config(path), "m", 4) != base


def test_a_checkpoint_is_built_once_and_recorded(tiny_corpus, own_data, tmp_path):
    records = tmp_path / "pretraining.jsonl"
    first = ensure_pretrained(_config(str(tiny_corpus.manifest.path)), device="cpu", records=records, progress=False)
    again = ensure_pretrained(_config(str(tiny_corpus.manifest.path), log_every=1), device="cpu", records=records,
                              progress=False)
    assert first.built and not again.built and again.folder == first.folder == pretrained_dir(first.identity)
    [record] = [json.loads(line) for line in records.read_text().splitlines()]
    assert record["identity"] == first.identity and record["step"] == 4 and not record["resumed"]
    assert record["weights_sha256"] == weights_sha256(first.encoder_path) and record["device"] == "cpu"
    assert again.spec == f"apc@{first.encoder_path}"


def test_a_killed_build_is_resumed_to_the_weights_of_an_uninterrupted_one(tiny_corpus, own_data, tmp_path,
                                                                          monkeypatch):
    config = _config(str(tiny_corpus.manifest.path))
    whole = ensure_pretrained(config, device="cpu", progress=False)
    digest = weights_sha256(whole.encoder_path)
    monkeypatch.setenv("AVBENCH_DATA", str(tmp_path / "other"))
    pretrain(config, pretrained_dir(whole.identity), stop_after=2, progress=False, device="cpu")  # killed at step 2
    resumed = ensure_pretrained(config, device="cpu", records=tmp_path / "r.jsonl", progress=False)
    assert resumed.built and resumed.identity == whole.identity
    assert json.loads((tmp_path / "r.jsonl").read_text())["resumed"] is True
    assert weights_sha256(resumed.encoder_path) == digest


def _ensure_in_child(data: str, records: str) -> None:
    ensure_pretrained(_config(data), device="cpu", records=records, progress=False)


def test_two_processes_asking_for_one_identity_build_it_once(tiny_corpus, own_data, tmp_path):
    records = tmp_path / "pretraining.jsonl"
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_ensure_in_child, args=(str(tiny_corpus.manifest.path), str(records)))
                for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=300)
    assert [child.exitcode for child in children] == [0, 0]
    assert len(records.read_text().splitlines()) == 1


def test_the_weights_digest_ignores_what_is_saved_around_the_tensors(tmp_path):
    import torch

    state = torch.nn.Linear(3, 2).state_dict()
    for i in range(2):
        torch.save({"encoder": state, "note": f"run {i}"}, tmp_path / f"{i}.pt")
    assert (tmp_path / "0.pt").read_bytes() != (tmp_path / "1.pt").read_bytes()
    assert weights_sha256(tmp_path / "0.pt") == weights_sha256(tmp_path / "1.pt") == state_digest(state)


def test_a_second_build_of_one_identity_keeps_the_first_builds_curves(tiny_corpus, own_data, tmp_path,
                                                                      monkeypatch):
    """The same identity built on another machine (here: another data folder and another seed's
    curve standing in for another machine's floating point) gets a curves folder of its own."""
    from bench.pretrain.stage import record_build, resolve_identity

    records = tmp_path / "results" / "pretraining.jsonl"
    config = _config(str(tiny_corpus.manifest.path))
    first = ensure_pretrained(config, device="cpu", records=records, progress=False)
    kept = records.parent / "pretraining" / first.identity
    first_curve = (kept / "loss.csv").read_bytes()
    monkeypatch.setenv("AVBENCH_DATA", str(tmp_path / "other-machine"))
    other = pretrained_dir(first.identity)
    pretrain(_config(str(tiny_corpus.manifest.path), seed=1), other, progress=False, device="cpu")
    summary = json.loads((other / "pretrain.json").read_text())
    again = record_build(records, first.identity, config, resolve_identity(config).manifest, summary, other, 1.0,
                         False, "rebuilt")
    assert (kept / "loss.csv").read_bytes() == first_curve
    assert again["files"] == f"pretraining/{first.identity}-{again['checkpoint_hash']}"
    assert (records.parent / again["files"] / "loss.csv").read_bytes() == (other / "loss.csv").read_bytes()
    assert [json.loads(line)["files"] for line in records.read_text().splitlines()] == [
        f"pretraining/{first.identity}", again["files"]]
