"""Render the node API's OpenAPI description as Markdown.

    python -m node.apidoc > docs/api-reference.md

The app is built over a real ``LocalService`` (an empty in-memory store, a mempool, a
one-validator genesis) with the default ``NodeConfig`` limits: the same app a node serves,
with no process, file or network behind it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from ledger.crypto import PrivateKey
from ledger.genesis import Genesis
from ledger.store import MemoryStore
from node.api import create_app
from node.config import NodeConfig
from node.service import LocalService

COMMAND = "python -m node.apidoc > docs/api-reference.md"


def limits(**overrides: Any) -> NodeConfig:
    """A NodeConfig for its API limits only (the defaults, or ``overrides``): its paths
    name nothing."""
    unused = Path("/nonexistent")
    return NodeConfig(dir=unused, index=0, api=("127.0.0.1", 0), p2p=("127.0.0.1", 0),
                      genesis_path=unused, key_path=unused, store_path=unused, **overrides)


def local_service() -> LocalService:
    """A service over an empty MemoryStore and a one-validator genesis."""
    key = PrivateKey.from_seed(bytes(32))
    genesis = Genesis.from_bytes(json.dumps({
        "chain_id": "apidoc", "organizations": [], "policies": {},
        "validators": [{"name": "node0", "pubkey": key.public.hex(), "power": 1}],
    }).encode())
    return LocalService(genesis, MemoryStore(genesis.hash), name="node0")


def schema_only_app() -> FastAPI:
    """The API app with the default limits, for its OpenAPI schema."""
    return create_app(local_service(), limits())


def _type(schema: dict[str, Any]) -> str:
    """A short human rendering of a JSON schema: type and constraints."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        kinds = [_type(s) for s in schema["anyOf"] if s.get("type") != "null"]
        return " or ".join(kinds)
    kind = str(schema.get("type", "any"))
    if schema.get("format"):
        kind += f" ({schema['format']})"
    if kind == "array" and "items" in schema:
        kind = f"array of {_type(schema['items'])}"
    if kind == "object" and "properties" in schema:
        required = set(schema.get("required", ()))
        fields = ", ".join(f"`{k}`{'' if k in required else '?'}: {_type(v)}"
                           for k, v in schema["properties"].items())
        kind = f"object {{{fields}}}"
    limits = []
    for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                      ("exclusiveMaximum", "<")):
        if key in schema:
            limits.append(f"{sign} {schema[key]}")
    if "pattern" in schema:
        limits.append(f"matches `{schema['pattern']}`")
    return kind + (f", {', '.join(limits)}" if limits else "")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _anchor(method: str, path: str) -> str:
    text = f"{method} {path}".lower()
    return "".join(c for c in text.replace(" ", "-") if c.isalnum() or c in "-_")


def _operation(method: str, path: str, op: dict[str, Any]) -> list[str]:
    out = [f"## {method.upper()} {path}", ""]
    if op.get("description"):
        out += [" ".join(op["description"].split()), ""]
    params = op.get("parameters", [])
    if params:
        out += ["| parameter | in | type | required | default |", "|---|---|---|---|---|"]
        for p in params:
            schema = p.get("schema", {})
            default = f"`{json.dumps(schema['default'])}`" if "default" in schema else ""
            out.append(f"| `{p['name']}` | {p['in']} | {_cell(_type(schema))} | "
                       f"{'yes' if p.get('required') else 'no'} | {default} |")
        out.append("")
    body = op.get("requestBody")
    if body:
        out += [f"Request body{' (required)' if body.get('required') else ''}: "
                f"{_cell(body.get('description', ''))}", ""]
        out += ["| content type | shape |", "|---|---|"]
        for media, doc in body.get("content", {}).items():
            schema = doc.get("schema", {})
            shape = schema.get("description") or _type(schema)
            if schema.get("description") and schema.get("type"):
                shape = f"{_type(schema)}: {schema['description']}"
            out.append(f"| `{media}` | {_cell(shape)} |")
        out.append("")
    out += ["| status | content type | answer |", "|---|---|---|"]
    codes: list[tuple[str, str, str]] = []
    for status, resp in op.get("responses", {}).items():
        if "x-problem-codes" in resp:
            codes += [(status, c["code"], c["when"]) for c in resp["x-problem-codes"]]
            continue
        media = ", ".join(f"`{m}`" for m in resp.get("content", {})) or "—"
        out.append(f"| {status} | {media} | {_cell(resp['description'])} |")
    out.append("")
    if codes:
        out += ["| error status | problem `code` | when |", "|---|---|---|"]
        out += [f"| {s} | `{c}` | {_cell(w)} |" for s, c, w in codes]
        out.append("")
    return out


def render(schema: dict[str, Any]) -> str:
    """The Markdown reference of an OpenAPI schema."""
    info = schema["info"]
    out = [
        "# API reference",
        "",
        f"<!-- generated by `{COMMAND}` from the code; do not edit by hand -->",
        "",
        f"{info['title']}, version {info['version']}: {info.get('description', '')} "
        "This page is generated from the OpenAPI description that every node also serves at "
        "`/openapi.json` (browsable at `/docs`). The guide, with examples and the meaning of "
        "each field, is [api.md](api.md); the contract is SPEC section 7.",
        "",
        "Every error is `application/problem+json` ([Problem](#problem)) with a stable `code`. "
        "Any path also answers 404 `not_found` when unknown and 405 `method_not_allowed` for "
        "a method it does not serve.",
        "",
        "| method | path | what |",
        "|---|---|---|",
    ]
    operations = [(method, path, op) for path, ops in schema["paths"].items()
                  for method, op in ops.items()]
    for method, path, op in operations:
        first = _cell(op.get("description", op.get("summary", "")).split("\n")[0])
        out.append(f"| {method.upper()} | [`{path}`](#{_anchor(method, path)}) | {first} |")
    out.append("")
    for method, path, op in operations:
        out += _operation(method, path, op)
    for name, comp in schema.get("components", {}).get("schemas", {}).items():
        out += [f"## {name}", "", _cell(comp.get("description", "")), "",
                "| field | type | required | meaning |", "|---|---|---|---|"]
        required = set(comp.get("required", ()))
        for field, sub in comp.get("properties", {}).items():
            out.append(f"| `{field}` | {_cell(_type(sub))} | "
                       f"{'yes' if field in required else 'no'} | "
                       f"{_cell(sub.get('description', ''))} |")
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def main() -> None:
    """Print the reference of this code's API."""
    print(render(schema_only_app().openapi()), end="")


if __name__ == "__main__":
    main()
