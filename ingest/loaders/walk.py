"""Deterministic folder walk that stays inside the root and cannot loop."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from kb.errors import InvalidInput

log = logging.getLogger(__name__)


def iter_files(root: Path) -> Iterator[Path]:
    """Yield every regular file under `root` depth-first in name order.

    Hidden files and folders (".git", ".env") are skipped, as are symlinks that leave the root,
    broken or looping symlinks, special files (FIFOs, sockets, devices) and a second path to a
    file or folder already seen. Unsupported files are yielded too, so callers can report them.
    """
    root = Path(root)
    if root.is_file():
        yield root
        return
    if not root.is_dir():
        raise InvalidInput(f"no such folder: {root}; check the path")
    real_root = root.resolve()
    root_stat = real_root.stat()
    seen_dirs = {(root_stat.st_dev, root_stat.st_ino)}
    seen_files: set[tuple[int, int]] = set()
    stack = [iter(_sorted_entries(root))]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            if entry.is_symlink():
                target = path.resolve(strict=True)
                if not target.is_relative_to(real_root):
                    continue
                info = target.stat()
            else:
                info = entry.stat(follow_symlinks=False)
        except (OSError, RuntimeError):  # broken link or symlink loop (RuntimeError before 3.13)
            continue
        key = (info.st_dev, info.st_ino)
        if stat.S_ISDIR(info.st_mode) and key not in seen_dirs:
            seen_dirs.add(key)
            stack.append(iter(_sorted_entries(path)))
        elif stat.S_ISREG(info.st_mode) and key not in seen_files:
            seen_files.add(key)
            yield path


def _sorted_entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except OSError as exc:
        log.warning("cannot list %s: %s", folder, exc)
        return []
