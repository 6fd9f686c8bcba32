"""The launcher: the job step that runs one VM (launcher.py), above checkpoint, which it drives."""
