"""WAL positions (LSNs): one parser and one formatter for every process.

PostgreSQL prints an LSN as two hexadecimal halves, `16/B374D848`; every decision
compares them as integers (bytes since the start of WAL). The agent's reports, the
election, the sync sidecar's stream and the seed all go through these functions, so a
malformed position is refused in one place with one message.
"""

from __future__ import annotations

_HEX = frozenset("0123456789abcdefABCDEF")


def str_to_lsn(text: str) -> int:
    """'16/B374D848' -> 0x16B374D848; ValueError on anything but `hex/hex` (1-8 digits each)."""
    hi, sep, lo = text.partition("/")
    if not sep or not 0 < len(hi) <= 8 or not 0 < len(lo) <= 8 or not set(hi + lo) <= _HEX:
        raise ValueError(f"not an LSN (expected like '0/16B3748'): {text!r}")
    return int(hi, 16) << 32 | int(lo, 16)


def lsn_to_str(lsn: int) -> str:
    """0x16B3748 -> '0/16B3748' (PostgreSQL's %X/%X form)."""
    if not 0 <= lsn < 1 << 64:
        raise ValueError(f"LSN out of range: {lsn!r}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str | None) -> int | None:
    """Like `str_to_lsn`, for agents' reports: an absent position (None or empty) stays
    None, and surrounding white space is tolerated."""
    if text is None or text == "":
        return None
    return str_to_lsn(text.strip())


def format_lsn(value: int | None) -> str | None:
    """Like `lsn_to_str`, keeping None."""
    return None if value is None else lsn_to_str(value)
