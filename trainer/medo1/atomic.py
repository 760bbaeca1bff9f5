"""Files that replace earlier results: written aside, synced, then renamed into place, so a failed or killed run
leaves the previous file whole; folders that replace earlier ones likewise (`new_dir`, `replace_dir`), and only
folders medo1 wrote are ever replaced. Light on purpose (no torch, no transformers): data, translate and report
use it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from medo1.errors import Medo1Error


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` atomically (a same-directory temp file, fsync, rename, fsync of the directory)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """`atomic_write_bytes` of `text` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


# Folders medo1 writes whole (an export, an imported or tiny model) carry this marker file, written first thing:
# only a folder holding it is ever replaced or deleted, so a path that names someone else's folder is refused,
# never emptied.
DIR_MARKER = ".medo1"


class NotMedo1Dir(Medo1Error):
    """A folder medo1 would replace holds files medo1 did not write there."""


def is_medo1_dir(path: str | Path) -> bool:
    return (Path(path) / DIR_MARKER).is_file()


def check_replaceable(path: str | Path, field: str) -> None:
    """Refuse a path that medo1 would replace as a whole when it is a file, or a non-empty folder it did not write."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise NotMedo1Dir(f"{field}: {path} exists and is not a folder medo1 wrote; give a new or empty folder")
    if path.is_dir() and not is_medo1_dir(path) and any(path.iterdir()):
        raise NotMedo1Dir(
            f"{field}: {path} is a folder medo1 did not write (no {DIR_MARKER} marker in it) and is not empty; "
            "medo1 replaces only folders it wrote: give a new or empty folder, or move this one away"
        )


def new_dir(path: str | Path, kind: str) -> Path:
    """An empty folder at `path`, marked as medo1's (`path` may be medo1's own leftover, which is emptied first)."""
    path = Path(path)
    check_replaceable(path, kind)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    atomic_write_text(path / DIR_MARKER, json.dumps({"written_by": "medo1", "kind": kind}) + "\n")
    return path


def replace_dir(staging: str | Path, final: str | Path) -> Path:
    """Rename the finished `staging` folder to `final`. A `final` already there must be medo1's (or empty): it is
    renamed aside first and deleted only once `staging` is in its place."""
    staging, final = Path(staging), Path(final)
    check_replaceable(final, str(final))
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
    staging.rename(final)
    if old is not None:
        shutil.rmtree(old)
    return final
