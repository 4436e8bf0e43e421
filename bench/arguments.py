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
