"""Writing files so that a reader (or a killed process) never sees half of one.

>>> with atomic_file(Path("out.txt")) as f:      # doctest: +SKIP
...     f.write(b"all or nothing")
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` only when the block completes: temp sibling, fsync, rename.

    On any exception (a KeyboardInterrupt too) the temporary file is removed and ``path`` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text.encode("utf-8"))


def replace_folder(target: Path, files: dict[str, str | bytes]) -> None:
    """Write ``files`` into folder ``target`` all at once: a failure leaves the old folder (or none)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name, content in files.items():
            (tmp / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
        tmp.rename(target)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
