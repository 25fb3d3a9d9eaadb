"""Command-line surfaces: the `ringkeeper` command and the kubectl plugin."""
