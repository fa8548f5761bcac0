"""``ledger audit`` is parsed by a parser of its own (``node.cli.ALONE``) so that it imports
only what an audit needs: its usage, help and errors must be the full parser's, word for
word, and ``--db`` / ``--file`` must not load the HTTP client, x509 or the receipt verifier
(docs/performance.md, "Start-up of a short audit")."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.store import SqliteStore
from node import cli
from tests.factory import ChainBuilder, make_fixture

ROOT = Path(__file__).resolve().parents[2]


def _audit_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices["audit"]
            return found
    raise AssertionError("no subcommands")


def test_audit_alone_has_the_full_parsers_help() -> None:
    full, alone = cli.build_parser(), cli.build_parser("audit")
    assert _audit_parser(alone).format_help() == _audit_parser(full).format_help()
    assert _audit_parser(alone).format_usage() == _audit_parser(full).format_usage()
    assert alone.format_usage() == full.format_usage()  # "usage: ledger [-h] COMMAND ..."


@pytest.mark.parametrize("argv", [
    ["audit"],
    ["audit", "--db", "x.db"],
    ["audit", "--db", "x.db", "--file", "y", "--genesis", "g"],
    ["audit", "--db", "x.db", "--genesis", "g", "extra"],
    ["audit", "--db", "x.db", "--genesis", "g", "--checkpoint", "nope"],
    ["audit", "--db", "x.db", "--genesis", "g", "--workers", "two"],
    ["audit", "--help"],
])
def test_audit_alone_parses_and_refuses_as_the_full_parser(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    outcomes = []
    for parser in (cli.build_parser(), cli.build_parser("audit")):
        try:
            args = parser.parse_args(argv)
            outcomes.append(("parsed", sorted((k, str(v)) for k, v in vars(args).items())))
        except SystemExit as exc:
            out = capsys.readouterr()
            outcomes.append(("exit", exc.code, out.out, out.err))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == "exit"


def test_main_parses_audit_alone_and_the_rest_in_full(
        monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str | None] = []
    real = cli.build_parser

    def spy(command: str | None = None) -> argparse.ArgumentParser:
        asked.append(command)
        return real(command)

    monkeypatch.setattr(cli, "build_parser", spy)
    for argv in (["audit", "--help"], ["export", "--help"], ["--help"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
    assert asked == ["audit", None, None]


@pytest.mark.slow
def test_an_offline_audit_loads_no_http_x509_or_receipt_code(tmp_path: Path) -> None:
    fx = make_fixture()
    genesis = fx.write_genesis(tmp_path)
    db = tmp_path / "chain.db"
    with SqliteStore(db, genesis_hash=fx.genesis.hash) as store:
        ChainBuilder(fx, store).add(3)
    script = (
        "import sys\n"
        "from node.cli import main\n"
        f"code = main(['audit', '--db', {str(db)!r}, '--genesis', {str(genesis)!r}, '-q'])\n"
        "heavy = ('httpx', 'node.client', 'node.cluster', 'ledger.receipts', 'tqdm',\n"
        "         'cryptography.x509', 'node.governance', 'node.witnesscli')\n"
        "print(code, sorted(m for m in heavy if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("ok: ") and "3 records verified" in lines[0]
    assert lines[-1] == "0 []"


@pytest.mark.parametrize(("url", "ca", "env", "expected"), [
    ("http://127.0.0.1:8000", None, {}, False),  # no connection uses TLS
    ("HTTP://node:8000", Path("ca.pem"), {}, False),
    ("https://node:8000", None, {}, True),  # the system trust store
    ("https://node:8000", Path("ca.pem"), {}, "ca.pem"),
    ("http://a:8000,https://b:8000", None, {}, True),  # several nodes: one is https
    ("http://node:8000", None, {"HTTP_PROXY": "https://proxy:3128"}, True),
    ("http://node:8000", None, {"all_proxy": "https://proxy:3128"}, True),
])
def test_a_plain_http_node_is_reached_without_loading_the_trust_store(
        url: str, ca: Path | None, env: dict[str, str], expected: object,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "all_proxy", "LEDGER_CA"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    args = argparse.Namespace(node=url, ca=ca)
    assert cli._node_verify(args) == expected
