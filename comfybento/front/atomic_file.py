"""A file replaced whole or not at all: its new bytes in a temporary file beside it, renamed over it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes, temp_prefix: str) -> None:
    """Write `data` to `path` atomically, keeping the mode of the file it replaces.

    The temporary file is named `temp_prefix`... in the same folder (so the rename stays on one file system), and is
    removed if anything fails; readers see the old file or the new one, never a part.
    """
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        if path.exists():
            os.chmod(temp, path.stat().st_mode & 0o777)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
