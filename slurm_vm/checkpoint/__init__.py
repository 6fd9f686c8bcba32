"""Checkpoint and restore of a VM (see docs/checkpoint.md)."""
