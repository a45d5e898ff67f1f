"""PDF via pypdf: one section per page, `page` numbered from 1."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from ingest.loaders.base import Loader, LoadOptions, make_document
from kb.errors import LoaderError
from kb.types import Document, Section

log = logging.getLogger(__name__)


class PdfLoader(Loader):
    name = "pdf"
    extensions = (".pdf",)

    def load(self, path: Path, data: bytes, options: LoadOptions) -> list[Document]:
        from pypdf import PdfReader
        from pypdf.errors import DependencyError, FileNotDecryptedError

        # pypdf signals a broken file with many exception types (PdfReadError, ValueError,
        # KeyError, ...), so anything it raises while parsing means "cannot read this file"
        try:
            reader = PdfReader(io.BytesIO(data), strict=False)
            if reader.is_encrypted and not reader.decrypt(""):
                raise FileNotDecryptedError("a password is required")
            pages = reader.pages
            page_count = len(pages)
        except DependencyError as exc:
            raise LoaderError(
                f"encrypted PDF: {path} uses a cipher pypdf cannot run here ({exc}); "
                "install it with `pip install cryptography`"
            ) from exc
        except FileNotDecryptedError as exc:
            raise LoaderError(
                f"encrypted PDF: {path} cannot be opened without a password ({exc}); "
                "save a decrypted copy (e.g. `qpdf --decrypt`) and ingest that"
            ) from exc
        except Exception as exc:
            raise LoaderError(
                f"cannot read PDF {path}: {type(exc).__name__}: {exc}; the file is truncated or "
                "corrupt, re-export it or repair it (e.g. `qpdf in.pdf out.pdf`)"
            ) from exc

        sections, failed = [], 0
        for number in range(1, page_count + 1):
            try:
                sections.append(Section(pages[number - 1].extract_text() or "", page=number))
            except Exception as exc:  # one broken page must not lose the others
                failed += 1
                log.warning("%s: page %d unreadable: %s", path, number, exc)
        if failed and failed == page_count:
            raise LoaderError(
                f"cannot read PDF {path}: none of its {page_count} pages could be parsed; "
                "re-export it or repair it (e.g. `qpdf in.pdf out.pdf`)"
            )
        metadata = {"format": self.name, "pages": page_count}
        document = make_document(path, sections, title=_title(reader), metadata=metadata)
        if document is None:
            raise LoaderError(
                f"no extractable text (scanned?) in {path}: its {page_count} page(s) have no text "
                "layer; run OCR first (e.g. `ocrmypdf in.pdf out.pdf`) and ingest the result"
            )
        return [document]


def _title(reader) -> str | None:
    try:
        title = reader.metadata.title if reader.metadata else None
    except Exception:  # a malformed info dictionary only costs the title
        return None
    return title.strip() if isinstance(title, str) and title.strip() else None
