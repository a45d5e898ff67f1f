"""Zip-bomb checks for zip-based formats (docx, xlsx), made before any reader inflates a member."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

from kb.errors import LoaderError

MAX_RATIO = 100  # real office XML compresses ~5-20:1; deflate bombs reach ~1000:1
RATIO_CHECK_MIN_BYTES = 16 * 1024 * 1024  # repetitive but real XML can pass 100:1 below this
UNPACKED_PER_PACKED_LIMIT = 4  # total unpacked size may be this many times max_bytes
MAX_MEMBERS = 10_000
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... file name length, extra field length
_INFLATE_STEP = 1024 * 1024
_FEED_STEP = 64 * 1024


def check_zip(path: Path, data: bytes, *, max_bytes: int, kind: str) -> None:
    """Check a zip's member count, total unpacked size and compression ratios; raise LoaderError.

    The declared sizes in the zip headers can lie, and zipfile inflates a member to its real
    size before it notices, so every member is also inflated here in 1 MiB steps and refused
    as soon as it grows past what its header declares: memory stays bounded either way.
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
    for member in members:
        _check_real_size(path, data, member, kind)


def _check_real_size(path: Path, data: bytes, member: zipfile.ZipInfo, kind: str) -> None:
    """Inflate `member` in bounded steps; refuse it if it holds more than its declared size."""
    if member.is_dir() or member.file_size == 0 and member.compress_size == 0:
        return
    fix = f"re-save it as {kind} from its editor, or leave it out"
    if member.flag_bits & 0x1:
        raise LoaderError(f"encrypted zip member {member.filename!r} in {path}; {fix}")
    header = data[member.header_offset : member.header_offset + _LOCAL_HEADER.size]
    if len(header) < _LOCAL_HEADER.size or not header.startswith(b"PK\x03\x04"):
        raise LoaderError(f"damaged zip member {member.filename!r} in {path}; {fix}")
    _, name_length, extra_length = _LOCAL_HEADER.unpack(header)
    start = member.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    packed = memoryview(data)[start : start + member.compress_size]
    if member.compress_type == zipfile.ZIP_STORED:
        real = len(packed)
    elif member.compress_type == zipfile.ZIP_DEFLATED:
        real = _inflated_size(packed, stop_after=member.file_size)
    else:
        raise LoaderError(
            f"zip member {member.filename!r} in {path} uses compression method "
            f"{member.compress_type}, which {kind} files never use; {fix}"
        )
    if real > member.file_size:
        raise LoaderError(
            f"zip bomb suspected in {path}: member {member.filename!r} declares "
            f"{member.file_size:,} bytes but unpacks to more; {fix}"
        )


def _inflated_size(packed: memoryview, *, stop_after: int) -> int:
    """Bytes `packed` inflates to, counting at most one step past `stop_after`."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    size = 0
    try:
        for offset in range(0, len(packed), _FEED_STEP):  # small feeds keep unconsumed_tail small
            pending = packed[offset : offset + _FEED_STEP]
            while pending:
                size += len(inflater.decompress(pending, _INFLATE_STEP))
                if size > stop_after:
                    return size
                pending = inflater.unconsumed_tail
    except zlib.error:
        return size  # damaged data: the reader that opens the file reports it
    return size
