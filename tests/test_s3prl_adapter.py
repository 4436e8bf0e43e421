"""The `s3prl:<upstream>` adapter, without s3prl: the install error, the family listing, and the
wrapper's own logic (lazy build, lengths, padding, weights, safety) on a stand-in upstream.

The stand-in follows s3prl's upstream interface (UpstreamBase/UpstreamExpert in s3prl 0.4.18:
called with a list of 1-D waveforms, returns {"hidden_states": [[b, n, D], ...], ...}, and
`get_downsample_rates(key)`), and its frames follow Kaldi's snip_edges (1 + (n - 400) // 160, 98
for one second) like s3prl's APC, so the adapter's ceil(n / 160) lengths need its repeat-last-frame
padding. Its second hidden state subtracts the mean over time, as group-normed upstreams (wav2vec)
do, so s3prl-style padded batching would leak. The real s3prl runs in tests/parity (tox -e s3prl).
"""

from __future__ import annotations

import configparser
import json
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from baselines import s3prl_adapter
from bench import registry
from bench.errors import ConfigError
from bench.registry import create_encoder

ROOT = Path(__file__).resolve().parents[1]
HAS_S3PRL = True
try:
    import s3prl  # noqa: F401
except ImportError:
    HAS_S3PRL = False


class StandInUpstream(nn.Module):
    """s3prl's upstream interface, over a strided conv (window 400, hop 160, no padding)."""

    def __init__(self, ckpt: str, **kwargs) -> None:
        super().__init__()
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        dim = int(state["dim"])
        self.conv = nn.Conv1d(1, dim, 400, stride=160)  # draws from the global RNG (init)
        self.proj = nn.Linear(dim, dim)
        self.load_state_dict(state["model"])

    def get_downsample_rates(self, key: str) -> int:
        return 160

    def forward(self, wavs: list[torch.Tensor]) -> dict:
        x = pad_sequence(wavs, batch_first=True).unsqueeze(1)
        h0 = torch.tanh(self.conv(x).transpose(1, 2))        # [b, n, D]
        h1 = self.proj(h0 - h0.mean(dim=1, keepdim=True))    # normalises over time: padding leaks
        return {"hidden_states": [h0, h1], "last_hidden_state": h1}


BUILDS: list[str] = []


def standin_local(ckpt: str, *args, **kwargs) -> StandInUpstream:
    BUILDS.append(ckpt)
    return StandInUpstream(ckpt, **kwargs)


def write_standin_ckpt(path: Path, dim: int = 8, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    conv, proj = nn.Conv1d(1, dim, 400, stride=160), nn.Linear(dim, dim)
    state = {**{f"conv.{k}": v for k, v in conv.state_dict().items()},
             **{f"proj.{k}": v for k, v in proj.state_dict().items()}}
    torch.save({"dim": dim, "model": state}, path)
    return path


@pytest.fixture
def standin(monkeypatch):
    """s3prl 'installed' with one upstream, 'standin', whose hub entry is standin_local."""
    def fake_hub_entry(variant: str):
        if variant != "standin":
            raise ConfigError(f"s3prl:{variant}: no such upstream in the stand-in hub")
        return standin_local

    monkeypatch.setattr(s3prl_adapter, "hub_entry", fake_hub_entry)
    monkeypatch.setattr(s3prl_adapter, "require_s3prl", lambda: type("s3prl", (), {"__version__": "stand-in"}))
    BUILDS.clear()
    return standin_local


def speech_like(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000
    return (0.3 * torch.sin(2 * torch.pi * 220 * t) + 0.05 * torch.randn(n, generator=g)).float()


# ------------------------------------------------------------------------------- without s3prl


def test_without_s3prl_the_error_explains_the_optional_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "s3prl", None)  # what an environment without s3prl looks like
    ckpt = write_standin_ckpt(tmp_path / "apc.ckpt")
    for kwargs in ({}, {"checkpoint": ckpt}, {"ckpt": str(ckpt)}):
        with pytest.raises(ConfigError) as err:
            create_encoder("s3prl:apc", **kwargs)
        message = str(err.value)
        for fact in ("s3prl is an optional dependency", "torch 2.8", "torch==2.13.0", "torchaudio <= 2.8",
                     "SEPARATE virtualenv", "tox -e s3prl", "pip install torch==2.8.0 torchaudio==2.8.0 s3prl==0.4.18",
                     "--no-deps -e .", ".[s3prl]"):
            assert fact in message, fact


def test_avbench_list_shows_the_family_without_s3prl(monkeypatch, capsys):
    from bench.cli import main

    monkeypatch.setitem(sys.modules, "s3prl", None)
    # Only this family, so the listing builds nothing else (the other encoders have their own tests).
    monkeypatch.setattr(registry, "_REGISTRY", {"s3prl": registry._REGISTRY["s3prl"]})
    monkeypatch.setattr(registry, "_LOADED", True)
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "s3prl:<variant>" in out and "a family" in out and "baselines.s3prl_adapter" in out
    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [{"name": "s3prl:<variant>", "family": True, "source": "baselines.s3prl_adapter",
                     "doc": [s3prl_adapter.s3prl_encoder.__doc__.strip().splitlines()[0]]}]


def test_the_family_needs_a_variant():
    with pytest.raises(ConfigError, match="is a family"):
        create_encoder("s3prl")


# ------------------------------------------------------------------------- the wrapper's logic


def test_checkpoint_builds_the_upstream_lazily(standin, tmp_path):
    ckpt = write_standin_ckpt(tmp_path / "standin.ckpt")
    bare = create_encoder("s3prl:standin")
    assert not bare.built and bare.dim == 0
    with pytest.raises(ConfigError, match="no checkpoint yet"):
        bare(torch.zeros(1, 16000), torch.tensor([16000]))

    for enc in (create_encoder("s3prl:standin", checkpoint=ckpt), create_encoder(f"s3prl:standin@{ckpt}"),
                create_encoder("s3prl:standin", ckpt=str(ckpt))):
        assert enc.built and enc.name == "s3prl:standin"
        assert (enc.dim, enc.frame_rate, enc.downsample_rate, enc.num_layers) == (8, 100.0, 160, 2)
        assert enc.needs_pretraining is True and enc.trainable
    assert len(BUILDS) == 3
    # ckpt= and the same checkpoint= build once; the second load is a no-op.
    create_encoder("s3prl:standin", ckpt=str(ckpt), checkpoint=ckpt)
    assert len(BUILDS) == 4


def test_lengths_follow_s3prl_and_short_upstream_output_repeats_its_last_frame(standin, tmp_path):
    enc = create_encoder("s3prl:standin", checkpoint=write_standin_ckpt(tmp_path / "s.ckpt"), layer=0).eval()
    wav = speech_like(16000, 0)[None]
    feats, lengths = enc(wav, torch.tensor([16000]))
    assert feats.shape == (1, 100, 8) and lengths.tolist() == [100]  # ceil(16000 / 160)
    own = enc.upstream([wav[0]])["hidden_states"][0]
    assert own.shape[1] == 98  # snip_edges: 1 + (16000 - 400) // 160
    torch.testing.assert_close(feats[:, :98], own)
    torch.testing.assert_close(feats[0, 98:], own[0, -1:].expand(2, -1))
    assert enc.output_lengths(torch.tensor([0, 1, 160, 161, 16000])).tolist() == [0, 1, 1, 2, 100]
    # Shorter than 50 ms: zero-padded to 800 samples, so 300 samples give ceil(300 / 160) = 2 frames.
    feats, lengths = enc(speech_like(300, 1)[None], torch.tensor([300]))
    assert feats.shape == (1, 2, 8) and lengths.tolist() == [2]


def test_padding_does_not_leak(standin, tmp_path):
    ckpt = write_standin_ckpt(tmp_path / "s.ckpt")
    enc = create_encoder("s3prl:standin", checkpoint=ckpt).eval()
    clips = [speech_like(n, i) for i, n in enumerate((16000, 9000, 4321))]
    wav = pad_sequence(clips, batch_first=True)
    wav[1, 9000:] = 1.0  # junk in the padding
    lengths = torch.tensor([c.numel() for c in clips])
    with torch.no_grad():
        batch, out_lengths = enc(wav, lengths)
        for i, clip in enumerate(clips):
            alone, n = enc(clip[None], lengths[i:i + 1])
            assert int(out_lengths[i]) == int(n[0])
            assert torch.allclose(batch[i, : int(n[0])], alone[0], atol=1e-6)
            assert not batch[i, int(n[0]):].any()
        # s3prl-style batching runs the upstream on the padded batch: its time normalisation leaks.
        batched = create_encoder("s3prl:standin", checkpoint=ckpt, batch_clips=True).eval()
        leaky, _ = batched(wav, lengths)
    assert not torch.allclose(leaky[2, :28], batch[2, :28], atol=1e-4)


def test_avbench_weights_load_into_the_built_upstream(standin, tmp_path):
    ckpt = write_standin_ckpt(tmp_path / "s.ckpt")
    enc = create_encoder("s3prl:standin", checkpoint=ckpt)
    state = {k: v + 0.5 for k, v in enc.state_dict().items()}
    assert all(k.startswith("upstream.") for k in state)
    finetuned = tmp_path / "finetuned.pt"
    torch.save({"format": "avbench-pretrain/1", "encoder": state}, finetuned)
    loaded = create_encoder("s3prl:standin", ckpt=str(ckpt), checkpoint=finetuned)
    torch.testing.assert_close(loaded.state_dict(), state)
    torch.save(state, tmp_path / "bare.pt")
    loaded.load_checkpoint(tmp_path / "bare.pt")
    with pytest.raises(ConfigError, match="ckpt=S3PRL_CKPT"):
        create_encoder("s3prl:standin", checkpoint=finetuned)
    # Another s3prl checkpoint rebuilds (another architecture, here another width).
    loaded.load_checkpoint(write_standin_ckpt(tmp_path / "wide.ckpt", dim=12))
    assert loaded.dim == 12 and loaded.checkpoint == (tmp_path / "wide.ckpt").resolve()


class Foreign:
    """Not a tensor, container, number, string or Namespace: unpickling it could run code."""


def test_a_checkpoint_with_other_objects_is_refused_before_s3prl_reads_it(standin, tmp_path):
    path = tmp_path / "evil.ckpt"
    ok = torch.load(write_standin_ckpt(tmp_path / "ok.ckpt"), weights_only=True)
    torch.save({**ok, "extra": Foreign()}, path)
    with pytest.raises(ConfigError, match=r"refused to load an s3prl checkpoint: it pickles an object of type .*Foreign"):
        create_encoder("s3prl:standin", checkpoint=path)
    assert BUILDS == []
    with pytest.raises(ConfigError, match="checkpoint not found"):
        create_encoder("s3prl:standin", checkpoint=tmp_path / "missing.ckpt")


def test_layer_config_and_rng(standin, tmp_path):
    ckpt = write_standin_ckpt(tmp_path / "s.ckpt")
    with pytest.raises(ConfigError, match=r"layer must be in -2\.\.1"):
        create_encoder("s3prl:standin", checkpoint=ckpt, layer=2)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    last = create_encoder("s3prl:standin", checkpoint=ckpt)  # builds: the stand-in's init draws numbers
    assert torch.equal(torch.rand(3), expected)
    config = last.config()
    json.dumps(config)
    assert config["layer"] == 1 and config["downsample_rate"] == 160 and len(config["checkpoint_sha256"]) == 64
    assert create_encoder("s3prl:standin", checkpoint=ckpt, layer=1).config() == config  # -1 is 1
    assert create_encoder("s3prl:standin", checkpoint=ckpt, layer=0).config() != config
    other = write_standin_ckpt(tmp_path / "other.ckpt", seed=1)
    assert create_encoder("s3prl:standin", checkpoint=other).config()["checkpoint_sha256"] != \
        config["checkpoint_sha256"]


@pytest.mark.skipif(HAS_S3PRL, reason="checks the core environment, where s3prl is absent")
def test_this_module_imports_without_s3prl():
    assert "s3prl" not in sys.modules or sys.modules["s3prl"] is None


# ------------------------------------------------------------------------------- packaging


def test_tox_s3prl_env_is_the_tested_pins_plus_the_core_without_torch():
    """tox -e s3prl installs avbench with --no-deps, so its deps must repeat the core's (torch swapped)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # An extra with these pins could never resolve beside the core's torch pin: there is none.
    assert "s3prl" not in project.get("optional-dependencies", {})
    pins = [f"torch=={s3prl_adapter.TORCH_VERSION}", f"torchaudio=={s3prl_adapter.TORCH_VERSION}",
            f"s3prl=={s3prl_adapter.S3PRL_VERSION}"]
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    section = tox["testenv:s3prl"]
    deps = [line.strip() for line in section["deps"].splitlines() if line.strip()]
    core = [d for d in project["dependencies"] if not d.replace(" ", "").startswith("torch==")]
    assert sorted(deps) == sorted(pins + core + ["pytest>=8"])
    assert section["skip_install"].strip() == "true" and "--no-deps" in section["commands_pre"]
    assert "tests/parity" in section["commands"]
