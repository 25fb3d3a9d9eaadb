"""Keys that cannot collide between campuses, and the names that pick them.

Every workload key is one signed bigint laid out as

    0 | site number (15 bits) | run number (16 bits) | counter (32 bits)

The site number is unique in the ring (`lis.sites` holds name <-> number and refuses a
second name for a number), the run number is taken from the site's own `lis.sites` row at
the start of each run, and the counter only grows inside one run. So two campuses never
pick the same key, and neither does one campus run twice, without any coordination
between campuses while they write. A single bigint (not a (site, seq) pair) keeps foreign
keys and the ring's key hashing simple, and the owner of any row is readable from its key.
Row revisions (`rev` columns) come from the same counter, so every write is unique too.

Pure: no I/O, so the layout is property-tested on its own (tests/unit/test_workload_keys.py).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from ..api.v1alpha1.common import DNS_LABEL_PATTERN

SITE_BITS, RUN_BITS, COUNTER_BITS = 15, 16, 32
MAX_SITE = (1 << SITE_BITS) - 1
MAX_RUN = (1 << RUN_BITS) - 1
MAX_COUNTER = (1 << COUNTER_BITS) - 1
_LABEL = re.compile(DNS_LABEL_PATTERN)


class KeySpaceError(ValueError):
    """A site number, run number or counter outside its field."""


def valid_site_name(name: str) -> str:
    """A site name is a DNS-1123 label (the names campuses and satellites already carry);
    it travels to SQL only as a bind parameter, but an odd name is refused before any use."""
    if len(name) > 63 or not _LABEL.match(name):
        raise ValueError(f"site name {name!r} is not a DNS-1123 label (lowercase letters, "
                         "digits and '-', at most 63, starting and ending alphanumeric)")
    return name


def compose(site: int, run: int, counter: int) -> int:
    if not 1 <= site <= MAX_SITE:
        raise KeySpaceError(f"site number {site} outside 1..{MAX_SITE}")
    if not 1 <= run <= MAX_RUN:
        raise KeySpaceError(f"run number {run} outside 1..{MAX_RUN}")
    if not 1 <= counter <= MAX_COUNTER:
        raise KeySpaceError(f"counter {counter} outside 1..{MAX_COUNTER}")
    return (site << (RUN_BITS + COUNTER_BITS)) | (run << COUNTER_BITS) | counter


def decompose(key: int) -> tuple[int, int, int]:
    """(site, run, counter) of a key: who wrote a row is readable from its key."""
    if not 0 < key < (1 << 63):
        raise KeySpaceError(f"key {key} is not a positive bigint")
    return (key >> (RUN_BITS + COUNTER_BITS), (key >> COUNTER_BITS) & MAX_RUN,
            key & MAX_COUNTER)


def site_range(site: int) -> tuple[int, int]:
    """The inclusive key range of one site (every run), for `WHERE key BETWEEN`."""
    lo = compose(site, 1, 1)
    return lo, lo | ((1 << (RUN_BITS + COUNTER_BITS)) - 1)


def check_digit(digits: str) -> int:
    """Luhn check digit: a mistyped or misread barcode is caught at the scanner."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return (10 - total % 10) % 10


def barcode(specimen_id: int) -> str:
    """A specimen's label: its 19-digit key and a Luhn digit, so unique like the key."""
    digits = f"{specimen_id:019d}"
    return digits + str(check_digit(digits))


def barcode_ok(code: str) -> bool:
    return len(code) == 20 and code.isdigit() and check_digit(code[:-1]) == int(code[-1])


@dataclass
class KeySource:
    """Hands out the keys of one (site, run); the single source of ids and revisions."""

    site: int
    run: int
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        compose(self.site, self.run, 1)  # refuse a bad site or run at once

    def next(self) -> int:
        return compose(self.site, self.run, next(self._counter))

    def take(self, n: int) -> list[int]:
        return [self.next() for _ in range(n)]
