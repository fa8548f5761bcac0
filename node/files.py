"""Durable file replacement, the one way the node and the CLI write a file that must survive
a crash whole: signing state, evidence, proposal files, audit state, export bundles."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def durable_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content into; on a clean exit it is fsynced,
    renamed over ``path`` and the folder fsynced, so a crash leaves the old file or the new
    one, never a part. On an error the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` durably (``durable_file``)."""
    with durable_file(path) as f:
        f.write(data)
