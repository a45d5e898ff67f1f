"""Zip-bomb checks for zip-based formats (docx, xlsx), made on the directory without inflating."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from kb.errors import LoaderError

MAX_RATIO = 100  # real office XML compresses ~5-20:1; deflate bombs reach ~1000:1
RATIO_CHECK_MIN_BYTES = 1024 * 1024  # tiny members may compress well without harm
UNPACKED_PER_PACKED_LIMIT = 4  # total unpacked size may be this many times max_bytes
MAX_MEMBERS = 10_000


def check_zip(path: Path, data: bytes, *, max_bytes: int, kind: str) -> None:
    """Check a zip's member count, total unpacked size and compression ratios; raise LoaderError.

    The sizes come from the central directory; zipfile never inflates a member past its
    declared size, so checking the declared sizes bounds what a later reader can unpack.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise LoaderError(
            f"not a valid {kind} file: {path} is not a readable zip archive ({exc}); "
            f"re-save it as {kind}"
        ) from exc
    if len(members) > MAX_MEMBERS:
        raise LoaderError(
            f"suspicious {kind} file: {path} holds {len(members):,} zip members "
            f"(limit {MAX_MEMBERS:,}); re-save it or leave it out"
        )
    total = sum(m.file_size for m in members)
    limit = UNPACKED_PER_PACKED_LIMIT * max_bytes
    if total > limit:
        raise LoaderError(
            f"{kind} file too large when unpacked: {path} unpacks to {total:,} bytes "
            f"(limit {limit:,} = {UNPACKED_PER_PACKED_LIMIT} x KB_MAX_FILE_BYTES); it may be a "
            "zip bomb; raise KB_MAX_FILE_BYTES only if you trust the file"
        )
    for member in members:
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size >= RATIO_CHECK_MIN_BYTES and ratio > MAX_RATIO:
            raise LoaderError(
                f"zip bomb suspected in {path}: member {member.filename!r} unpacks "
                f"{member.compress_size:,} bytes to {member.file_size:,} (ratio {ratio:,.0f}:1, "
                f"limit {MAX_RATIO}:1); re-save the document from its editor, or leave it out"
            )
