"""The ``$batch`` wire format: reading a ``multipart/mixed`` request, writing the response (pure).

As "Execute batch operations using the Web API" (S-batch: learn.microsoft.com/power-apps/
developer/data-platform/webapi/execute-batch-operations-using-web-api) and OData 4.0 §11.7
describe it: the request's ``Content-Type`` is ``multipart/mixed`` with a ``boundary`` (quoted
or not); each part has ``Content-Type: application/http`` and
``Content-Transfer-Encoding: binary`` and holds one HTTP request (request line, headers, blank
line, optional body); ``--<boundary>--`` ends the batch; a part whose ``Content-Type`` is
``multipart/mixed`` is a change set. Lines may end in CRLF or LF. The response is
``multipart/mixed; boundary=batchresponse_<guid>`` (a new GUID, never the request's boundary)
whose parts hold full HTTP responses (``HTTP/1.1 200 OK``, headers, blank line, body), CRLF
line ends, and an optional ``Content-ID`` echoed from its request part.

Batch-level refusals (`BatchError`, HTTP 400, code ``0x0`` as OData parsing errors carry; the
texts are the simulator's, no documented wording was found):

- no ``multipart/mixed`` content type, or no boundary;
- a body that is not UTF-8, lacks the closing delimiter, or has a malformed part;
- more than 1,000 operations ("Batch requests can contain up to 1000 individual requests",
  S-batch and reference 2.1);
- any change set or any operation other than GET: the simulator is read-only.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from itertools import pairwise

MAX_OPERATIONS = 1000
_REQUEST_LINE = re.compile(r"^(?P<method>[A-Z]+) (?P<target>\S+) HTTP/1\.1$")
_BLANK_LINE = re.compile(r"\r?\n\r?\n")


class BatchError(Exception):
    """The whole batch is refused with HTTP 400 and this message."""

    status = 400
    code = "0x0"


@dataclass(frozen=True)
class BatchOperation:
    """One request inside a batch, as written in its part."""

    method: str
    target: str  # the request target as written: absolute URL, /api/data/… path or relative
    headers: dict[str, str] = field(default_factory=dict)  # repeated names joined by ", "
    content_id: str | None = None


def boundary_of(content_type: str | None) -> str:
    """The boundary of a ``multipart/mixed`` Content-Type; BatchError otherwise."""
    message = Message()
    message["Content-Type"] = content_type or ""
    boundary = message.get_param("boundary")
    if message.get_content_type() != "multipart/mixed" or not isinstance(boundary, str):
        raise BatchError(
            f"The content type '{content_type or ''}' is not a batch payload: a $batch request "
            "needs Content-Type multipart/mixed with exactly one boundary parameter."
        )
    return boundary


def _headers(block: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.splitlines():
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise BatchError(f"The batch part header line '{line}' is malformed.")
        key = next((k for k in headers if k.lower() == name.strip().lower()), name.strip())
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return headers


def _header(headers: dict[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


def _split_blank(text: str) -> tuple[str, str, str]:
    """(before, separator, after) the first blank line; after is "" when there is none."""
    found = _BLANK_LINE.search(text)
    if found is None:
        return text, "", ""
    return text[: found.start()], found.group(), text[found.end() :]


def _parts(text: str, boundary: str) -> list[str]:
    """The bodies between the delimiters (the CRLF before a delimiter belongs to it)."""
    delimiter = re.compile(rf"^--{re.escape(boundary)}(?P<close>--)?[ \t]*\r?$", re.MULTILINE)
    marks = list(delimiter.finditer(text))
    if not marks or not marks[-1]["close"] or any(m["close"] for m in marks[:-1]):
        raise BatchError("The batch payload does not end with its closing delimiter.")
    parts = []
    for start, end in pairwise(marks):
        body = text[start.end() : end.start()]
        body = body.removeprefix("\r\n").removeprefix("\n")
        parts.append(body.removesuffix("\n").removesuffix("\r"))
    return parts


def _operation(number: int, part: str) -> BatchOperation:
    mime, _, request = _split_blank(part)
    mime_headers = _headers(mime)
    kind = (_header(mime_headers, "Content-Type") or "").split(";")[0].strip().lower()
    if kind == "multipart/mixed":
        raise BatchError(
            f"Operation {number} of the batch is a change set; the simulator is read-only and "
            "serves only GET operations."
        )
    if kind != "application/http":
        raise BatchError(
            f"Operation {number} of the batch has Content-Type '{kind}'; batch parts must be "
            "application/http."
        )
    encoding = (_header(mime_headers, "Content-Transfer-Encoding") or "binary").strip().lower()
    if encoding != "binary":
        raise BatchError(
            f"Operation {number} of the batch must use Content-Transfer-Encoding binary."
        )
    head, _, _body = _split_blank(request.lstrip("\r\n"))
    line, _, header_block = head.partition("\n")
    found = _REQUEST_LINE.match(line.strip())
    if not found:
        raise BatchError(f"Operation {number} of the batch has no valid request line.")
    if found["method"] != "GET":
        raise BatchError(
            f"Operation {number} of the batch is {found['method']} {found['target']}; the "
            "simulator is read-only and serves only GET operations."
        )
    return BatchOperation(
        "GET", found["target"], _headers(header_block), _header(mime_headers, "Content-ID")
    )


def parse_batch(content_type: str | None, body: bytes) -> list[BatchOperation]:
    """The GET operations of a batch request, in order; BatchError for anything refused."""
    boundary = boundary_of(content_type)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BatchError("The batch payload is not UTF-8 text.") from exc
    parts = _parts(text, boundary)
    if len(parts) > MAX_OPERATIONS:
        raise BatchError(
            f"The batch holds {len(parts)} operations; a batch request can contain at most "
            f"{MAX_OPERATIONS}."
        )
    if not parts:
        raise BatchError("The batch payload holds no operations.")
    return [_operation(number, part) for number, part in enumerate(parts, start=1)]


def render_part(
    status: int, headers: dict[str, str], body: bytes, content_id: str | None = None
) -> bytes:
    """One response part: MIME headers, blank line, the full HTTP response."""
    mime = "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    if content_id is not None:
        mime += f"Content-ID: {content_id}\r\n"
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head = f"{mime}\r\nHTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n{lines}\r\n"
    return head.encode() + body


def render_batch(parts: list[bytes]) -> tuple[str, bytes]:
    """(Content-Type, body) of the multipart response holding these parts."""
    boundary = f"batchresponse_{uuid.uuid4()}"
    delimiter = f"--{boundary}\r\n".encode()
    body = b"".join(delimiter + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()
    return f"multipart/mixed; boundary={boundary}", body
