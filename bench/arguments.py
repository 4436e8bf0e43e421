"""Command-line values that every stage's commands spell the same way."""

from __future__ import annotations

import argparse


def key_values(pairs: list[str] | None, flag: str) -> dict:
    """['layer=2', 'dims=[64, 128]'] -> {'layer': 2, 'dims': [64, 128]} (values parsed as YAML)."""
    import yaml

    from bench.errors import ConfigError

    out = {}
    for pair in pairs or []:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"{flag} {pair!r}: expected KEY=VALUE, e.g. {flag} layer=2")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{flag} {pair!r}: the value is not valid YAML ({exc})") from exc
    return out



def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def device_spec(text: str) -> str:
    from bench.device import check_device_spec
    from bench.errors import ConfigError

    try:
        return check_device_spec(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """`--device auto|cpu|cuda|cuda:N`, spelled the same on every command that runs torch."""
    parser.add_argument("--device", type=device_spec, default="auto",
                        help="auto (default: the GPU when torch sees one, else the CPU), cpu, cuda or cuda:N")


def add_precision_option(parser: argparse.ArgumentParser, *, default: str | None = "fp32") -> None:
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=default,
                        help="forward passes under autocast: fp32 (default, the paper's), bf16 (recommended on "
                             "GPUs) or fp16 (with loss scaling); a non-default precision is part of the run's identity")
