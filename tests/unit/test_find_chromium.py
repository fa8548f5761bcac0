"""`make test` and the browser tests find chromium the same way (tests/browser/chromium.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import chromium

ROOT = Path(__file__).resolve().parents[2]


def test_an_explicit_ledger_chromium_is_the_only_choice(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    exe = tmp_path / "chrome"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("LEDGER_CHROMIUM", str(exe))
    assert chromium.find_chromium() == str(exe)
    monkeypatch.setenv("LEDGER_CHROMIUM", str(tmp_path / "missing"))
    assert chromium.find_chromium() is None  # not silently another browser
    assert chromium.describe_missing() == f"no chromium at LEDGER_CHROMIUM={tmp_path}/missing"


def test_debian_first_then_playwrights_own_then_none(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEDGER_CHROMIUM", raising=False)
    debian = tmp_path / "chromium"
    debian.write_text("#!/bin/sh\n")
    debian.chmod(0o755)
    monkeypatch.setattr(chromium, "DEBIAN", str(debian))
    monkeypatch.setattr(chromium, "playwright_chromium", lambda: "/pw/chrome")
    assert chromium.find_chromium() == str(debian)
    monkeypatch.setattr(chromium, "DEBIAN", str(tmp_path / "absent"))
    assert chromium.find_chromium() == "/pw/chrome"
    monkeypatch.setattr(chromium, "playwright_chromium", lambda: None)
    assert chromium.find_chromium() is None
    message = chromium.describe_missing()
    assert "apt-get install chromium" in message and "playwright install chromium" in message


def test_make_browser_says_what_to_run_when_nothing_can_be_installed(tmp_path: Path) -> None:
    """The Makefile step, dry: apt-get and playwright replaced by `false`."""
    result = subprocess.run(
        ["make", "-s", "browser", f"LEDGER_CHROMIUM={tmp_path}/missing", "APT_GET=false",
         "PLAYWRIGHT=false", f"BIN={Path(sys.executable).parent}", "STAMP="],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.splitlines()[0] == (
        f"make test: no chromium at LEDGER_CHROMIUM={tmp_path}/missing")
