"""Writing files so that a reader (or a killed process) never sees half of one.

>>> with atomic_file(Path("out.txt")) as f:      # doctest: +SKIP
...     f.write(b"all or nothing")
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def normal_mode(folder: bool = False) -> int:
    """The permissions ``open()``/``mkdir()`` would give (0o644/0o755 under the usual umask): the temporary
    files and folders that writes go through are private (0o600/0o700) until renamed into place."""
    return (0o777 if folder else 0o666) & ~_umask()


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` only when the block completes: temp sibling, fsync, rename.

    On any exception (a KeyboardInterrupt too) the temporary file is removed and ``path`` keeps its old content.
    The file gets normal permissions (those of ``open()``), not the temporary file's private ones.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, normal_mode())
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
        tmp.chmod(normal_mode(folder=True))
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


def checkpoint_problem(path: str) -> str | None:
    """Why ``path`` is not a file ``torch.load`` reads (torch.save's zip format), or ``None``; no torch needed.

    Only the archive's table of contents is read, so a large checkpoint costs nothing here.
    """
    file = Path(path)
    try:
        info = file.stat()
    except FileNotFoundError:
        return f"no such file: {path} (relative paths start from the working directory, {Path.cwd()})"
    except (OSError, ValueError) as exc:
        return f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a regular file"
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return f"{path} is not a torch checkpoint (torch.save writes a zip archive; re-save older files with it)"
    if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        return f"{path} is a zip archive but not a torch checkpoint (no data.pkl in it)"
    return None


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file (a run's ``metrics.jsonl``): none when it is missing, and without a last
    line that a killed writer cut short.

    >>> read_jsonl(Path("no-such-file.jsonl"))
    []
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
