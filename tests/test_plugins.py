"""Third-party encoders through the `avbench.encoders` entry-point group, with no edit to avbench.

Each test writes an installed-looking distribution (a package plus a `*.dist-info` folder with
METADATA and entry_points.txt) into tmp_path, puts tmp_path on sys.path, and makes the registry
rescan on a copy of its table, so nothing leaks into other tests.
"""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bench import registry
from bench.errors import ConfigError

ENERGY_PLUGIN = '''
"""A third-party encoder: frame log-energy (and its delta) at 100 Hz, 25 ms windows."""
import torch
import torch.nn.functional as F

from bench.registry import Encoder


class EnergyEncoder(Encoder):
    frame_rate = 100.0
    dim = 2
    trainable = False

    def __init__(self, win: int = 400, hop: int = 160):
        super().__init__()
        self.win, self.hop = win, hop

    def output_lengths(self, lengths):
        return torch.div(torch.as_tensor(lengths), self.hop, rounding_mode="floor") + 1

    def forward(self, wav, lengths):
        lengths = lengths.to(wav.device)
        valid = torch.arange(wav.shape[1], device=wav.device) < lengths[:, None]
        frames = F.pad(wav * valid, (self.win // 2, self.win // 2)).unfold(-1, self.win, self.hop)
        energy = torch.log(frames.square().mean(-1) + 1e-10)  # [B, T']
        out_len = self.output_lengths(lengths)
        delta = torch.diff(energy, dim=1, prepend=energy[:, :1])
        feats = torch.stack([energy, delta], dim=-1)
        keep = torch.arange(feats.shape[1], device=wav.device) < out_len[:, None]
        return feats * keep[..., None], out_len
'''


def write_distribution(root: Path, dist: str, modules: dict[str, str], entry_points: dict[str, str]) -> None:
    """Lay out `root` the way pip installs a wheel: modules, then `<dist>-0.1.dist-info/`."""
    for module, source in modules.items():
        (root / module).mkdir()
        (root / module / "__init__.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\n{lines}")


@pytest.fixture
def fresh_registry(monkeypatch, tmp_path):
    """The registry, about to rescan entry points, on a throwaway copy of its table."""
    registry.list_encoders()  # built-ins into the real table first: their modules import only once
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_LOADED", False)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield registry
    for module in [m for m in sys.modules if m.startswith("avb_plugin_")]:
        del sys.modules[module]


def test_plugin_encoder_is_listed_and_runs(fresh_registry, tmp_path):
    write_distribution(tmp_path, "avb-plugin-demo", {"avb_plugin_demo": ENERGY_PLUGIN},
                       {"energy-demo": "avb_plugin_demo:EnergyEncoder"})
    names = fresh_registry.list_encoders()
    assert "energy-demo" in names and {"mfcc39", "logmel"} <= set(names)
    assert fresh_registry.encoder_entry("energy-demo").source == "plugin avb-plugin-demo"

    enc = fresh_registry.create_encoder("energy-demo", hop=160)
    assert enc.name == "energy-demo" and (enc.dim, enc.frame_rate) == (2, 100.0)
    wav = 0.1 * torch.randn(2, 16_000)
    feats, lengths = enc(wav, torch.tensor([16_000, 8_000]))
    assert feats.shape == (2, 101, 2) and lengths.tolist() == [101, 51]
    assert torch.isfinite(feats).all() and not feats[1, 51:].any()
    alone, _ = enc(wav[1:, :8_000], torch.tensor([8_000]))
    assert (feats[1, :51] - alone[0]).abs().max() < 1e-5


def test_plugin_is_gone_after_the_test():
    """The fixture's teardown restored the real table: no plugin name leaked."""
    assert "energy-demo" not in registry.list_encoders()
    with pytest.raises(ConfigError, match="unknown encoder 'energy-demo'"):
        registry.create_encoder("energy-demo")


def test_broken_plugin_is_logged_and_builtins_still_work(fresh_registry, tmp_path, caplog):
    write_distribution(tmp_path, "avb-plugin-broken",
                       {"avb_plugin_broken": 'raise ImportError("simulated missing dependency")\n'},
                       {"broken-demo": "avb_plugin_broken:Encoder"})
    write_distribution(tmp_path, "avb-plugin-demo", {"avb_plugin_demo": ENERGY_PLUGIN},
                       {"energy-demo": "avb_plugin_demo:EnergyEncoder",
                        "missing-attr-demo": "avb_plugin_demo:NoSuchEncoder",
                        # A plugin cannot replace a built-in: the built-in name wins.
                        "mfcc39": "avb_plugin_demo:EnergyEncoder"})
    with caplog.at_level(logging.ERROR, logger="avbench.registry"):
        names = fresh_registry.list_encoders()
    assert {"mfcc39", "logmel", "energy-demo"} <= set(names)
    assert "broken-demo" not in names and "missing-attr-demo" not in names
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "broken-demo" in messages and "simulated missing dependency" in messages
    assert "missing-attr-demo" in messages

    mfcc = fresh_registry.create_encoder("mfcc39")
    assert type(mfcc).__name__ == "MFCC39" and mfcc.dim == 39
    feats, lengths = mfcc(0.1 * torch.randn(1, 1_600), torch.tensor([1_600]))
    assert feats.shape == (1, 11, 39) and lengths.tolist() == [11]
    with pytest.raises(ConfigError, match="unknown encoder 'broken-demo'"):
        fresh_registry.create_encoder("broken-demo")


def test_an_encoder_family_builds_members_by_variant_name(capsys):
    from bench.cli import main

    @registry.register_encoder("test-family", family=True)
    def family(variant: str, scale: float = 1.0):
        class Member(registry.Encoder):
            frame_rate, dim = 100.0, {"small": 2, "large": 4}[variant]

            def forward(self, wav, lengths):
                frames = self.output_lengths(lengths)
                return torch.zeros(wav.shape[0], int(frames.max()), self.dim) + scale, frames

        return Member()

    try:
        assert registry.create_encoder("test-family:large", scale=2.0).dim == 4
        assert registry.create_encoder("test-family:small").dim == 2
        with pytest.raises(ConfigError, match="is a family; name a member as test-family:<variant>"):
            registry.create_encoder("test-family")
        with pytest.raises(ConfigError, match="'mfcc39' takes no ':variant'"):
            registry.create_encoder("mfcc39:big")
        with pytest.raises(ConfigError, match="may not contain ':'"):
            registry.register_encoder("a:b")
        assert main(["list"]) == 0
        assert "test-family:<variant>" in capsys.readouterr().out
    finally:
        registry._REGISTRY.pop("test-family", None)


def test_a_keyword_a_factory_does_not_take_is_a_config_error_even_without_parameters(fresh_registry):
    @fresh_registry.register_encoder("no-arguments")
    def no_arguments():
        return fresh_registry.Encoder()

    with pytest.raises(ConfigError, match="'no-arguments' does not accept \\['layer'\\]"):
        fresh_registry.create_encoder("no-arguments", layer=2)
