"""Satellite row filters: the model refuses what cannot be rendered safely, filter_sql
quotes every name and value (table of hostile values), and every rendered filter parses
back to the structure it came from (Hypothesis), so no value can end its literal."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ringkeeper.api.v1alpha1.satellite import (
    FILTER_VALUE_MAX,
    FilterOp,
    FilterTerm,
    RowFilter,
    SatelliteSpec,
)
from ringkeeper.core.satellite import filter_sql

MB = "x" * (1 << 20)


def rf(*terms: dict[str, Any]) -> RowFilter:
    return RowFilter.model_validate({"all": list(terms)})


RENDERED: list[tuple[dict[str, Any], str]] = [
    ({"column": "home_campus", "op": "In", "values": ["FY", "XD"]},
     """("home_campus" IN ('FY', 'XD'))"""),
    ({"column": "site", "op": "Equals", "values": ["x'; DROP TABLE lis.samples; --"]},
     """("site" = 'x''; DROP TABLE lis.samples; --')"""),
    ({"column": "site", "op": "NotEquals", "values": ["a\nb;\r\n--"]},
     """("site" <> 'a\nb;\r\n--')"""),
    ({"column": "site", "op": "NotIn", "values": ["'", "''", "\\", "$$", "$x$"]},
     """("site" NOT IN ('''', '''''', '\\', '$$', '$x$'))"""),
    ({"column": "name", "op": "Equals", "values": ["新登分院 \u202e\u2028😀"]},
     """("name" = '新登分院 \u202e\u2028😀')"""),
    ({"column": "_x9", "op": "IsNull"}, """("_x9" IS NULL)"""),
    ({"column": "c", "op": "IsNotNull", "values": []}, """("c" IS NOT NULL)"""),
    ({"column": "c", "op": "Equals", "values": ["*/ /*"]}, """("c" = '*/ /*')"""),
]


@pytest.mark.parametrize(("term", "sql"), RENDERED)
def test_rendered(term: dict[str, Any], sql: str) -> None:
    assert filter_sql(rf(term)) == sql


def test_terms_are_anded_in_parentheses_and_no_filter_is_true() -> None:
    assert filter_sql(rf({"column": "a", "op": "IsNull"},
                         {"column": "b", "op": "Equals", "values": ["1"]})) == \
        """("a" IS NULL) AND ("b" = '1')"""
    assert filter_sql(None) == "TRUE"


REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"column": "a;drop", "op": "IsNull"}, "should match pattern"),
    ({"column": 'a"b', "op": "IsNull"}, "should match pattern"),
    ({"column": "Home", "op": "IsNull"}, "should match pattern"),
    ({"column": "1a", "op": "IsNull"}, "should match pattern"),
    ({"column": "a\n", "op": "IsNull"}, "should match pattern"),
    ({"column": "a" * 64, "op": "IsNull"}, "at most 63"),
    ({"column": "a", "op": "Like", "values": ["%"]}, "Input should be"),
    ({"column": "a", "op": "Equals", "values": ["x\x00y"]}, "NUL"),
    ({"column": "a", "op": "Equals", "values": [MB]}, f"at most {FILTER_VALUE_MAX}"),
    ({"column": "a", "op": "In", "values": [str(i) for i in range(33)]}, "at most 32"),
    ({"column": "a", "op": "Equals", "values": []}, "exactly one value"),
    ({"column": "a", "op": "Equals", "values": ["1", "2"]}, "exactly one value"),
    ({"column": "a", "op": "NotEquals"}, "exactly one value"),
    ({"column": "a", "op": "In", "values": []}, "at least one value"),
    ({"column": "a", "op": "NotIn"}, "at least one value"),
    ({"column": "a", "op": "IsNull", "values": ["x"]}, "take no values"),
    ({"column": "a", "op": "IsNotNull", "values": [""]}, "take no values"),
    ({"column": "a", "op": "Equals", "values": [1]}, "valid string"),
    ({"column": "a", "op": "Equals", "values": ["1"], "sql": "1=1"}, "Extra inputs"),
]


@pytest.mark.parametrize(("term", "error"), REFUSED)
def test_refused(term: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError) as exc:
        rf(term)
    assert error in str(exc.value)


def test_filter_needs_a_term_and_raw_sql_is_no_field() -> None:
    with pytest.raises(ValidationError, match="at least 1"):
        RowFilter.model_validate({"all": []})
    with pytest.raises(ValidationError, match="Extra inputs"):
        SatelliteSpec.model_validate({"parentRef": {"name": "p"}, "version": "17", "tables": [
            {"name": "lis.samples", "rowFilter": "1=1; DROP TABLE lis.samples; --"}]})
    with pytest.raises(ValidationError, match="at most 16"):
        rf(*[{"column": "a", "op": "IsNull"}] * 17)


# -- parse back -------------------------------------------------------------------------
# A tokenizer of exactly the grammar filter_sql writes. If a value could close its literal
# (or a name its identifier), the text after it would be read as tokens of their own, and
# the parse would not give back the structure rendered.
TOKEN = re.compile(r"""\s*(?:"((?:[^"]|"")*)"|'((?:[^']|'')*)'|(IS NOT NULL|IS NULL|NOT IN|"""
                   r"""IN|AND|<>|=|\(|\)|,))""", re.S)
OPS = {"=": FilterOp.EQUALS, "<>": FilterOp.NOT_EQUALS, "IN": FilterOp.IN,
       "NOT IN": FilterOp.NOT_IN, "IS NULL": FilterOp.IS_NULL,
       "IS NOT NULL": FilterOp.IS_NOT_NULL}


def tokens(sql: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(sql):
        m = TOKEN.match(sql, pos)
        assert m is not None and m.end() > pos, f"unparsed at {pos}: {sql[pos:pos + 40]!r}"
        ident, lit, word = m.groups()
        if ident is not None:
            out.append(("ident", ident.replace('""', '"')))
        elif lit is not None:
            out.append(("lit", lit.replace("''", "'")))
        else:
            out.append(("kw", word))
        pos = m.end()
    return out


def parse(sql: str) -> list[tuple[str, FilterOp, list[str]]]:
    toks, terms, i = tokens(sql), [], 0

    def take(kind: str, value: str | None = None) -> str:
        nonlocal i
        k, v = toks[i]
        assert k == kind and (value is None or v == value), (toks[i], kind, value)
        i += 1
        return v

    while True:
        take("kw", "(")
        col = take("ident")
        op = OPS[take("kw")]
        values: list[str] = []
        if op in (FilterOp.EQUALS, FilterOp.NOT_EQUALS):
            values.append(take("lit"))
        elif op in (FilterOp.IN, FilterOp.NOT_IN):
            take("kw", "(")
            values.append(take("lit"))
            while toks[i] == ("kw", ","):
                i += 1
                values.append(take("lit"))
            take("kw", ")")
        take("kw", ")")
        terms.append((col, op, values))
        if i == len(toks):
            return terms
        take("kw", "AND")


NASTY = st.sampled_from(["'", "''", '"', ";", "--", "/*", "*/", "\n", "\r", "\\", "$$",
                         " AND ", ") OR (", "IS NULL", ",", "😀", "\u2028", "\x7f"])
# No NUL (refused at admission) and no lone surrogates (no UTF-8 text holds one).
TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)))
VALUES = st.lists(st.one_of(NASTY, TEXT),
                  max_size=6).map("".join).filter(lambda s: len(s) <= FILTER_VALUE_MAX)
COLUMNS = st.from_regex(r"[a-z_][a-z0-9_]{0,62}", fullmatch=True)


@st.composite
def terms(draw: st.DrawFn) -> FilterTerm:
    op = draw(st.sampled_from(list(FilterOp)))
    fixed = {FilterOp.EQUALS: 1, FilterOp.NOT_EQUALS: 1, FilterOp.IS_NULL: 0,
             FilterOp.IS_NOT_NULL: 0}
    n = fixed[op] if op in fixed else draw(st.integers(1, 5))
    return FilterTerm.model_validate({"column": draw(COLUMNS), "op": op.value,
                                      "values": draw(st.lists(VALUES, min_size=n,
                                                              max_size=n))})


@given(st.lists(terms(), min_size=1, max_size=5))
@settings(max_examples=300, deadline=None)
def test_rendered_sql_parses_back_to_the_filter(ts: list[FilterTerm]) -> None:
    f = RowFilter.model_validate({"all": [t.model_dump(by_alias=True) for t in ts]})
    assert parse(filter_sql(f)) == [(t.column, FilterOp(t.op), list(t.values)) for t in ts]


def test_parser_catches_a_value_that_escapes() -> None:
    """The property can fail: a renderer that did not double quotes yields another parse."""
    naive = """("site" = 'x') OR ('1' = '1')"""
    with pytest.raises(AssertionError):
        parse(naive)
