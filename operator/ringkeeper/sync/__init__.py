"""The ring sync sidecar: capture a member's changes, route them, apply them exactly once."""
