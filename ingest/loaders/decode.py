"""Bytes to text: binary sniffing, encoding detection and light normalisation."""

from __future__ import annotations

import codecs
import re

SNIFF_BYTES = 8192

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# C0 controls that never appear in text; tab, newlines, form feed, backspace and ESC are allowed
_CONTROL = bytes(b for b in range(32) if b not in b"\t\n\r\f\b\x1b") + b"\x7f"
_MAX_CONTROL_RATIO = 0.05
# legacy Western encodings win over an equally plausible guess (charset detection often
# reads French or German latin-1 as a Baltic or Central European code page)
_WESTERN = ("cp1252", "latin_1", "iso8859_15")
_WESTERN_TOLERANCE = 0.1

_BLANK_RUN = re.compile(r"\n{3,}")
_TRAILING_SPACE = re.compile(r"[ \t\f\v]+\n")


def bom_encoding(data: bytes) -> str | None:
    """The encoding a byte-order mark announces, if the data starts with one."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return encoding
    return None


def looks_binary(data: bytes) -> bool:
    """True when the first bytes hold NULs or many control characters (and no UTF-16/32 BOM)."""
    sample = data[:SNIFF_BYTES]
    if not sample or bom_encoding(sample):
        return False
    if b"\x00" in sample:
        return True
    controls = len(sample) - len(sample.translate(None, _CONTROL))
    return controls / len(sample) > _MAX_CONTROL_RATIO


def decode_bytes(data: bytes) -> tuple[str, str]:
    """Decode text: BOM, else UTF-8, else the most plausible detected charset, else latin-1."""
    encoding = bom_encoding(data)
    if encoding:
        return data.decode(encoding, errors="replace"), encoding.removesuffix("-sig")
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    encoding = _detect_charset(data)
    return data.decode(encoding, errors="replace"), encoding


def _detect_charset(data: bytes) -> str:
    from charset_normalizer import from_bytes

    matches = list(from_bytes(data))
    if not matches:
        return "latin_1"
    best = matches[0]
    for match in matches:
        if match.encoding in _WESTERN and match.chaos <= best.chaos + _WESTERN_TOLERANCE:
            return match.encoding
    return best.encoding


def normalize_text(text: str) -> str:
    """Light clean-up: drop NULs, unify newlines, trim line ends, collapse blank-line runs to one."""
    text = text.replace("\x00", "")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _TRAILING_SPACE.sub("\n", text + "\n")
    text = _BLANK_RUN.sub("\n\n", text)
    return text.strip("\n").rstrip()
