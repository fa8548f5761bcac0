"""The payload JSON view: lossless for maps with non-str keys, iterative at any depth."""

from __future__ import annotations

import json
import sys

from ledger.encoding import unpack_exact
from ledger.jsonview import jsonable


def test_common_shapes_are_unchanged() -> None:
    assert jsonable({"v": 21.5, "unit": "C", "raw": b"\x00\x01", "xs": [1, None, True]}) == {
        "v": 21.5, "unit": "C", "raw": "AAE=", "xs": [1, None, True]}
    assert jsonable(float("nan")) == "nan" and jsonable([float("-inf")]) == ["-inf"]


def test_keys_1_and_str_1_stay_two_keys() -> None:
    # Before: both became the JSON key "1" and one value was lost.
    value = unpack_exact(b"\x82\xa11\xa1s\x01\xa1i", "x")
    assert jsonable(value) == {"$map": [["1", "s"], [1, "i"]]}
    assert json.loads(json.dumps(jsonable(value))) == jsonable(value)


def test_keys_python_merges_and_container_keys_are_kept() -> None:
    value = unpack_exact(b"\x84\x01\xa1a\xc3\xa1b\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00\xa1c"
                         b"\x92\xc4\x01x\x80\xa1d", "x")
    assert jsonable(value) == {"$map": [[1, "a"], [True, "b"], [1.0, "c"], [["eA==", {}], "d"]]}


def test_a_lone_str_key_named_pairs_key_is_escaped() -> None:
    assert jsonable({"$map": []}) == {"$map": [["$map", []]]}
    assert jsonable({"$map": 1, "b": 2}) == {"$map": 1, "b": 2}  # unambiguous: two keys


def test_depth_does_not_exhaust_the_stack() -> None:
    deep: object = []
    for _ in range(sys.getrecursionlimit() * 3):
        deep = [deep, {"k": b"x"}]
    out = jsonable(deep)
    for _ in range(sys.getrecursionlimit() * 3):
        assert out[1] == {"k": "eA=="}
        out = out[0]
    assert out == []
