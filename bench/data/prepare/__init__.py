"""Preparers turn a user's local copy of a real corpus into a manifest (see bench.data.manifest)."""

from bench.data.prepare.common import BadAudioLog, probe_audio

__all__ = ["BadAudioLog", "probe_audio"]
