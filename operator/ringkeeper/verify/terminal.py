"""What `ringkeeper verify` shows people: passwords redacted from every line, a progress
bar (one updating line on a terminal, a plain line now and then in a log), long tables
clipped with a pointer to the file holding the rest.

Kept apart from the command (`cli.py`) because it is presentation only: it knows nothing
of rings, members or the cluster, and is tested on its own.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO
from urllib.parse import unquote, urlsplit

from ..core.verify_report import Progress
from .schedule import overall


@dataclass
class Redactor:
    """Removes the members' passwords from any text shown to the user."""

    secrets: set[str] = field(default_factory=set)

    def add_dsn(self, dsn: str | None) -> None:
        if not dsn:
            return
        try:
            pw = urlsplit(dsn).password
        except ValueError:
            pw = None
        if pw:
            self.secrets |= {pw, unquote(pw)}
        for part in dsn.split():
            key, eq, value = part.partition("=")
            if eq and key.strip() == "password" and value:
                self.secrets.add(value.strip("'\""))

    def __call__(self, text: str) -> str:
        for s in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(s, "***")
        return text


class ProgressBar:
    """A single updating line on a terminal, a plain line every `every` seconds otherwise."""

    def __init__(self, stream: TextIO, tables: Sequence[str], *, tty: bool | None = None,
                 every: float = 5.0, width: int = 24) -> None:
        self.stream = stream
        self.tables = list(tables)
        self.tty = stream.isatty() if tty is None else tty
        self.every = every if not self.tty else 0.1
        self.width = width
        self.last = 0.0
        self.last_table = ""
        self.shown = False
        self.fraction = 0.0

    def text(self, p: Progress) -> str:
        self.fraction = overall(p, self.tables) if self.tables else p.fraction
        filled = round(self.fraction * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        return f"[{bar}] {self.fraction:4.0%} {p.line()}"

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        new_table = p.table != self.last_table
        if not new_table and now - self.last < self.every:
            self.fraction = overall(p, self.tables) if self.tables else p.fraction
            return
        self.last, self.last_table = now, p.table
        line = self.text(p)
        if self.tty:
            self.stream.write("\r" + line[:_columns() - 1] + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        if self.tty and self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


MAX_LINES = 60


def clip(text: str, where: str, limit: int = MAX_LINES) -> str:
    """At most `limit` lines of a long table; the rest is in the file `where`."""
    lines = text.rstrip("\n").splitlines()
    if len(lines) <= limit:
        return "\n".join(lines)
    return "\n".join([*lines[:limit], f"... {len(lines) - limit} more line(s) in {where}"])


def _columns() -> int:
    import shutil

    return max(40, shutil.get_terminal_size((100, 24)).columns)
