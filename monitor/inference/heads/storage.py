"""Files of custom classes (heads, their `.prev` copies, labelled examples) written so that a refused write changes
nothing: every file goes to a temporary name first and is renamed into place only once all of it is on disk, and
a temporary file is removed whatever went wrong. Errors name the config key, never the path (the web layer shows
them to clients).
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Sequence

PREV_SUFFIX = ".prev"
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


class StorageError(Exception):
    """The disk refused a write (full, over quota, read-only, not allowed). `no_space` says whether more room
    would fix it (the HTTP answer is then 507); the message names the config key, not the path."""

    def __init__(self, message: str, code: int | None, key: str) -> None:
        super().__init__(message)
        self.errno = code
        self.key = key

    @property
    def no_space(self) -> bool:
        return self.errno in NO_SPACE

    @property
    def errno_name(self) -> str:
        return errno.errorcode.get(self.errno or 0, "EIO")


def storage_error(exc: OSError, what: str, key: str) -> StorageError:
    """`cannot <what> (<key>): <the system's wording>`, without the file name an OSError carries."""
    reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
    hint = {errno.ENOSPC: "; free some space", errno.EDQUOT: "; raise the quota or free some space",
            errno.EACCES: "; the daemon's user may not write there",
            errno.EPERM: "; the daemon's user may not write there"}.get(exc.errno or 0, "")
    return StorageError(f"cannot {what} ({key}): {reason.lower()}{hint}", exc.errno, key)


def prev_path(path: Path) -> Path:
    """Where the head a retrain or restore replaced is kept: `<head>.prev` next to it."""
    return path.with_name(path.name + PREV_SUFFIX)


def _write_temp(path: Path, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def write_files(files: Sequence[tuple[Path, bytes]]) -> None:
    """Write every (path, data) to a temporary file beside it, then rename them all into place in order.

    The renames come only after every byte is on disk, so a full disk (or any refused write) leaves every
    path as it was; renames within a folder do not allocate. Raises OSError; no temporary file is left."""
    temps: list[Path] = []
    try:
        for path, data in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            temps.append(_write_temp(path, data))
        for tmp, (path, _) in zip(list(temps), files):
            os.replace(tmp, path)
            temps.remove(tmp)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
