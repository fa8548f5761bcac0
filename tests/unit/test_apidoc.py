"""docs/api-reference.md is generated from the code's OpenAPI description and kept current."""

from __future__ import annotations

from pathlib import Path

from node.apidoc import COMMAND, render, schema_only_app

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "api-reference.md"


def test_committed_api_reference_matches_the_code() -> None:
    expected = render(schema_only_app().openapi())
    assert REFERENCE.read_text() == expected, (
        f"docs/api-reference.md is out of date with node/api.py; regenerate it: {COMMAND}")


def test_reference_lists_every_route_and_problem_code() -> None:
    schema = schema_only_app().openapi()
    text = render(schema)
    for path, operations in schema["paths"].items():
        for method in operations:
            assert f"## {method.upper()} {path}" in text
    for code in ("malformed", "body_too_large", "not_committed", "invalid_height",
                 "mempool_full", "commit_timeout", "too_many_subscribers"):
        assert f"`{code}`" in text
    assert not any("422" in ops[m]["responses"] for ops in schema["paths"].values()
                   for m in ops), "invalid parameters answer 400, not FastAPI's 422"
