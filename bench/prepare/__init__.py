"""Preparers turn a user's local copy of a real corpus into a manifest (see bench.manifest)."""

from bench.prepare.common import BadAudioLog, probe_audio

__all__ = ["BadAudioLog", "probe_audio"]
