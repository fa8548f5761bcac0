"""A decoded msgpack payload as JSON (the API's record, block and history views).

The common shapes stay as they always were: a map whose keys are all str is a JSON object,
an array a JSON array, bin standard base64, a non-finite float its Python name ("nan",
"inf", "-inf"). A map with any other key (int, float, bool, nil, bin, array or map) is
``{"$map": [[key, value], ...]}`` with every pair in wire order and each key converted by
the same rules, so keys ``"1"`` and ``1`` of one map stay two keys. A str-keyed map whose one
key is ``"$map"`` takes the pairs form too, so the object ``{"$map": ...}`` always means
pairs. docs/api.md documents the shape.

The conversion is iterative: no payload depth can exhaust the interpreter's stack.
"""

from __future__ import annotations

import math
from typing import Any

from ledger.encoding import MapPairs, b64encode

PAIRS_KEY = "$map"


def jsonable(value: Any) -> Any:
    """``value`` (as ``ledger.encoding.decode`` returns it) as a JSON-encodable value."""
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(value, root, 0)]  # (value, where to put it, slot)
    while stack:
        v, parent, slot = stack.pop()
        t = type(v)
        out: Any
        if t is bytes:
            out = b64encode(v)
        elif t is float:
            out = v if math.isfinite(v) else str(v)
        elif t is list or t is tuple:
            out = [None] * len(v)
            stack.extend((x, out, i) for i, x in enumerate(v))
        elif t is dict or t is MapPairs:
            pairs = list(v.items()) if t is dict else v.pairs
            if all(type(k) is str for k, _ in pairs) and not (
                    len(pairs) == 1 and pairs[0][0] == PAIRS_KEY):
                out = dict.fromkeys(k for k, _ in pairs)
                stack.extend((x, out, k) for k, x in pairs)
            else:
                cells = [[None, None] for _ in pairs]
                out = {PAIRS_KEY: cells}
                for cell, (k, x) in zip(cells, pairs, strict=True):
                    stack.append((k, cell, 0))
                    stack.append((x, cell, 1))
        else:  # None, bool, int, str
            out = v
        parent[slot] = out
    return root[0]
