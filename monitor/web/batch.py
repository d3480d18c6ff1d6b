"""POST /api/classify/batch, the request side: the files of a multipart body, or the entries of one zip archive,
each one named and checked against the batch's limits before anything is decoded, and the NDJSON lines
answered for them (their models document the route in /openapi.json).

A request-wide limit (files per request, total bytes, the archive's entry count, its unpacked size, entries
that overlap) refuses the request with its status before any line is sent: nothing has been done yet. A file's
own problem (not an image, too large, a path leaving the archive, a link, a nested archive, a size or checksum
that does not match its header, the decode's pixel and CPU budgets) is that file's error line; the others are
classified.

Zip bombs: an archive is read from memory (the request body, within server.batch_max_bytes) with Python's
zipfile. Its central directory's entry count is read from the end record before zipfile parses the directory;
the declared sizes are checked (each within server.upload_max_bytes, together within server.batch_max_bytes,
each at most MAX_RATIO times its compressed size) before anything is inflated; entries whose data overlap (the
way non-recursive bombs reuse one compressed stream) refuse the archive; an entry is inflated with a read
bounded by its declared size, and zipfile's CRC check refuses one that holds more or other data than declared.
Archives inside the archive are not opened.
"""
from __future__ import annotations

import io
import stat
import struct
import zipfile
from dataclasses import dataclass
from typing import Literal, Union

from pydantic import BaseModel, Field

from monitor.web.errors import ApiError
from monitor.web.models import Model, Prediction
from monitor.web.upload import FIELD, parse_multipart

ZIP_TYPES = ("application/zip", "application/x-zip-compressed")
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
FILE_FIELDS = (FIELD, "files", "files[]")      # parts taken as files even without a filename
OTHER_PARTS = 16          # parts besides the files a form may carry (a note, a submit button)
# Entries of an archive beyond its files (its folders, __MACOSX/ resource forks): at most this many more than
# 2 x server.batch_max_files. The count comes from the end record, before zipfile reads the directory.
ENTRY_SLACK = 64
# Inflated size against compressed size, for entries above RATIO_FLOOR: JPEG and PNG hardly compress, a BMP of
# a real frame about 3:1; a bomb's entries are at 1000:1.
MAX_RATIO = 100
RATIO_FLOOR = 64 * 1024
SKIPPED_PREFIX = "__MACOSX/"
NAME_CHARS = 300          # a name is cut to this in the answer
_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")


@dataclass(frozen=True)
class Limits:
    max_files: int            # server.batch_max_files
    max_bytes: int            # server.batch_max_bytes
    file_bytes: int           # server.upload_max_bytes: one file, or one entry inflated


class BatchFile:
    """One file of the batch: its name (a part's filename, an entry's path), and either its bytes (read(): an
    entry is inflated then, on the loading thread) or the refusal already known from its header."""

    def __init__(self, name: str, data: bytes | None = None, archive: zipfile.ZipFile | None = None,
                 entry: zipfile.ZipInfo | None = None, error: ApiError | None = None) -> None:
        self.name = name[:NAME_CHARS]
        self.error = error
        self._data = data
        self._archive = archive
        self._entry = entry

    def read(self) -> bytes:
        """The file's bytes; ApiError when it is refused or its entry does not hold what its header says."""
        if self.error is not None:
            raise self.error
        if self._data is not None:
            return self._data
        assert self._archive is not None and self._entry is not None
        entry = self._entry
        try:
            with self._archive.open(entry) as f:
                data = f.read(entry.file_size + 1)             # zipfile inflates no more than asked
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as e:
            # zipfile: "Bad CRC-32 for file ..." (other data than declared), truncated data, a bad stream
            raise ApiError(422, f"{self.name!r}: entry does not hold what its header declares "
                                f"({entry.file_size} bytes): {str(e)[:120]}") from None
        except Exception as e:                                  # zlib.error, lzma.LZMAError: a corrupt stream
            raise ApiError(422, f"{self.name!r}: entry cannot be inflated ({type(e).__name__}: {str(e)[:120]})") \
                from None
        if len(data) != entry.file_size:
            raise ApiError(422, f"{self.name!r}: entry holds {len(data)}{'+' if len(data) > entry.file_size else ''}"
                                f" bytes, its header declares {entry.file_size}")
        if data[:4] in ZIP_MAGIC:
            raise ApiError(415, f"{self.name!r}: a zip archive inside the archive is not opened (nesting)")
        return data


def is_zip(data: bytes) -> bool:
    return data[:4] in ZIP_MAGIC


def batch_files(content_type: str, multipart: bool, boundary: bytes, body: bytes, limits: Limits) -> list[BatchFile]:
    """The batch's files in order: every part of a multipart body that carries a file, or the entries of one zip
    archive (an application/zip body, or the only file of a multipart body). ApiError for the request-wide
    limits, a malformed body or an unreadable archive."""
    if not multipart:
        if content_type not in ZIP_TYPES:
            raise ApiError(415, f"Content-Type {content_type[:80]!r} is not accepted here: send multipart/form-data "
                                f"with the images as files, or one application/zip archive")
        return zip_files(body, "archive", limits)
    # The delimiters bound the number of parts (a boundary cannot occur inside a part): too many files is
    # answered before the parts are collected.
    delimiters = body.count(b"--" + boundary) - 1
    if delimiters > limits.max_files + OTHER_PARTS:
        raise ApiError(413, f"more than {limits.max_files} files in one request (server.batch_max_files)")
    parts = parse_multipart(body, boundary, max_parts=limits.max_files + OTHER_PARTS)
    files = [p for p in parts if p.filename is not None or p.name in FILE_FIELDS]
    if not files:
        names = ", ".join(repr(p.name) for p in parts)
        raise ApiError(400, f"multipart body has no file: send each image as a part with a filename (fields: "
                            f"{names})"[:300])
    if len(files) > limits.max_files:
        raise ApiError(413, f"{len(files)} files in one request, more than {limits.max_files} "
                            f"(server.batch_max_files)")
    contents = [p.data for p in files]
    for p in parts:
        p.chunks.clear()              # the joined contents are what the batch holds from here on
    if len(files) == 1 and is_zip(contents[0]):
        return zip_files(contents[0], files[0].filename or files[0].name or "archive", limits)
    out = []
    for p, data in zip(files, contents):
        name = p.filename or p.name or FIELD
        if len(data) > limits.file_bytes:
            out.append(BatchFile(name, error=ApiError(413, f"{name!r}: {len(data)} bytes, more than "
                                                           f"server.upload_max_bytes ({limits.file_bytes})")))
        elif is_zip(data):
            out.append(BatchFile(name, error=ApiError(415, f"{name!r}: a zip archive is accepted only alone (one "
                                                           f"archive per request, nothing beside it)")))
        else:
            out.append(BatchFile(name, data))
    return out


def zip_files(data: bytes, archive: str, limits: Limits) -> list[BatchFile]:
    """The files of a zip archive, in the order of its directory (folders and __MACOSX/ left out)."""
    declared = declared_entries(data)
    if declared is None:
        raise ApiError(400, f"{archive!r}: not a zip archive (no end of central directory record)")
    most = 2 * limits.max_files + ENTRY_SLACK
    if declared > most:
        raise ApiError(413, f"{archive!r}: zip archive lists {declared} entries, more than {most} (entry count: "
                            f"2 x server.batch_max_files + {ENTRY_SLACK})")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except Exception as e:            # BadZipFile, and what a crafted directory makes zipfile raise besides
        raise ApiError(400, f"{archive!r}: not a readable zip archive ({type(e).__name__}: {str(e)[:120]})") \
            from None
    entries = zf.infolist()
    if len(entries) > most:
        raise ApiError(413, f"{archive!r}: zip archive lists {len(entries)} entries, more than {most} (entry "
                            f"count: 2 x server.batch_max_files + {ENTRY_SLACK})")
    _check_overlaps(entries, zf.start_dir, archive)
    files = [e for e in entries if not e.is_dir() and not e.filename.startswith(SKIPPED_PREFIX)]
    if len(files) > limits.max_files:
        raise ApiError(413, f"{archive!r}: {len(files)} files in the archive, more than {limits.max_files} "
                            f"(server.batch_max_files)")
    unpacked = sum(e.file_size for e in files)
    if unpacked > limits.max_bytes:
        raise ApiError(413, f"{archive!r}: zip archive declares {unpacked} bytes unpacked, more than "
                            f"server.batch_max_bytes ({limits.max_bytes})")
    seen: set[str] = set()
    out = []
    for e in files:
        error = _entry_refusal(e, limits, e.filename in seen)
        seen.add(e.filename)
        out.append(BatchFile(e.filename, archive=zf, entry=e, error=error))
    return out


def _entry_refusal(e: zipfile.ZipInfo, limits: Limits, duplicate: bool) -> ApiError | None:
    name = e.filename[:NAME_CHARS]
    parts = e.filename.replace("\\", "/").split("/")
    if (e.filename.startswith(("/", "\\")) or ".." in parts or (len(e.filename) > 1 and e.filename[1] == ":")
            or any(ord(c) < 32 for c in e.filename)):
        return ApiError(400, f"{name!r}: absolute or '..' path (it would leave the archive's folder): refused")
    if e.create_system == 3 and stat.S_ISLNK(e.external_attr >> 16):
        return ApiError(415, f"{name!r}: a symbolic link: not followed")
    if duplicate:
        return ApiError(400, f"{name!r}: duplicate entry (the archive holds this path twice)")
    if e.flag_bits & 0x1:
        return ApiError(415, f"{name!r}: encrypted entry: not opened")
    if e.compress_type not in _METHODS:
        return ApiError(415, f"{name!r}: compression method {e.compress_type} is not supported")
    if name.lower().endswith(".zip"):
        return ApiError(415, f"{name!r}: a zip archive inside the archive is not opened (nesting)")
    if e.file_size > limits.file_bytes:
        return ApiError(413, f"{name!r}: declares {e.file_size} bytes unpacked, more than server.upload_max_bytes "
                             f"({limits.file_bytes})")
    if e.file_size >= RATIO_FLOOR and e.file_size > MAX_RATIO * max(1, e.compress_size):
        return ApiError(413, f"{name!r}: compression ratio {e.file_size / max(1, e.compress_size):.0f}:1, more "
                             f"than {MAX_RATIO}:1 (a zip bomb?): not inflated")
    return None


def _check_overlaps(entries: list[zipfile.ZipInfo], directory: int, archive: str) -> None:
    """Each entry's local header and data must end before the next entry (or the directory) begins; overlapping
    entries are how a small archive makes many huge files out of one compressed stream."""
    spans = sorted((e.header_offset, e.header_offset + 30 + len(e.orig_filename.encode("utf-8", "replace"))
                    + e.compress_size, e.filename) for e in entries)
    for (start, end, name), (following, _, _) in zip(spans, [*spans[1:], (directory, 0, "")]):
        if start < 0 or end > following:
            raise ApiError(400, f"{archive!r}: zip entries overlap ({name[:80]!r} runs into the next one; a zip "
                                f"bomb?): refused")


def declared_entries(data: bytes) -> int | None:
    """The entry count an archive's end of central directory record (or its ZIP64 record) announces; None when
    there is no such record."""
    at = data.rfind(b"PK\x05\x06", max(0, len(data) - 65535 - _EOCD.size))
    if at < 0 or at + _EOCD.size > len(data):
        return None
    count = _EOCD.unpack_from(data, at)[4]
    locator = at - _ZIP64_LOCATOR.size
    if count == 0xFFFF and locator >= 0 and data[locator:locator + 4] == b"PK\x06\x07":
        offset = _ZIP64_LOCATOR.unpack_from(data, locator)[2]
        if offset + _ZIP64_EOCD.size <= len(data) and data[offset:offset + 4] == b"PK\x06\x06":
            count = _ZIP64_EOCD.unpack_from(data, offset)[6]
    return int(count)


# ---------------------------------------------------------------------------------------------- the answer


class BatchResult(BaseModel):
    """A classified file."""
    index: int = Field(description="the file's place in the request (0, 1, ...): lines come in this order")
    file: str = Field(description="the part's filename, or the entry's path in the archive")
    predictions: list[Prediction]
    width: int = Field(description="the image's width as sent")
    height: int


class BatchError(BaseModel):
    """A file that was not classified; the others were."""
    index: int
    file: str
    status: int = Field(description="the HTTP status a single upload of this file would get (413, 415, 422, 503)")
    error: str = Field(description="what was wrong, naming the limit")


class BatchSummary(BaseModel):
    """The last line: the batch is complete."""
    done: Literal[True] = True
    files: int
    classified: int
    errors: int
    seconds: float
    model: Model


BatchLine = Union[BatchResult, BatchError, BatchSummary]
