"""SQL quoting for names and literals that come from catalogs or specs.

Every statement built from a name (schema, table, column, slot, publication) quotes it
here; values travel as bind parameters wherever the protocol allows. One copy, so a
fix reaches the sidecar, the seed and the verifier at once.
"""

from __future__ import annotations


def quote_ident(name: str) -> str:
    """Always quoted: names are used verbatim (case and punctuation kept)."""
    if "\x00" in name:
        raise ValueError("identifier contains a NUL byte")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """A standard-conforming string literal (standard_conforming_strings is on in every
    supported engine; backslashes are ordinary characters there)."""
    if "\x00" in text:
        raise ValueError("literal contains a NUL byte")
    return "'" + text.replace("'", "''") + "'"
