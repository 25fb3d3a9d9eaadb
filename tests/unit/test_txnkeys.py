"""TxnKeys answers exactly what a dict would, while holding at most its spill bound."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ringkeeper.sync.txnkeys import TxnKeys

# PostgreSQL text never holds NUL (TxnKeys separates key columns with it).
# Keys come from PostgreSQL text: no NUL, no lone surrogate (which cannot be encoded to
# the spill file, and which no server sends).
_text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
                max_size=3)
_keys = st.tuples(st.sampled_from(["lis.samples", "lis.results"]),
                  st.tuples(_text) | st.tuples(_text, _text))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_keys, st.booleans()), max_size=60),
       st.lists(_keys, max_size=20))
def test_same_answers_as_a_dict(writes: list[tuple[tuple[str, tuple[str, ...]], bool]],
                                probes: list[tuple[str, tuple[str, ...]]]) -> None:
    tk = TxnKeys(spill_keys=4)
    model: dict[tuple[str, tuple[str, ...]], bool] = {}
    for (rel, key), live in writes:
        tk.set(rel, key, live)
        model[(rel, key)] = live
        assert len(tk._mem) < 4  # never more than the bound in memory
    for rel, key in [k for k, _ in writes] + probes:
        assert tk.get(rel, key) == model.get((rel, key))
        hint = tk.recent(rel, [key])
        if key in hint:  # a hint, when given, is never wrong
            assert hint[key] == model[(rel, key)]
    tk.clear()
    for rel, key in [k for k, _ in writes]:
        assert tk.get(rel, key) is None
    tk.close()


def test_spills_to_disk_and_overwrites_there() -> None:
    tk = TxnKeys(spill_keys=1000)
    for i in range(5000):
        tk.set("t", (str(i),), True)
    assert tk.spills == 5 and len(tk._mem) == 0
    tk.set("t", ("7",), False)  # deleted later in the same transaction: newest wins
    assert tk.get("t", ("7",)) is False
    for _ in range(999):
        tk.set("u", ("x",), True)
    tk.set("t", ("8",), False)  # spills again: the file's copy is overwritten
    assert tk.get("t", ("7",)) is False and tk.get("t", ("8",)) is False
    assert tk.get("t", ("4999",)) is True and tk.get("t", ("5000",)) is None
    assert tk.get("t", ("1", "")) is None  # a two-column key is another key
    assert tk.recent("t", [("1",)]) == {}  # on disk: no hint, get() is exact
    tk.close()
