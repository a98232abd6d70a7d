"""The `@odata.nextLink` of a raw page body, read before the page is decoded. Pure.

A pager can only ask for page k+1 once it knows page k's nextLink, and decoding a 5,000-row page
takes longer than receiving it: on a latency-bound or busy server, every millisecond between
"page k has arrived" and "page k+1 is asked for" is lost. So the pager reads the link from the
raw bytes first (one reverse search in C, then the one JSON string after it) and sends the next
request while page k is decoded and committed.

It is a guess until the page is decoded: the pager compares it with the link the decoded page
really holds and drops the request sent ahead when they differ. Why the guess is nearly always
right: in valid JSON the needle `"@odata.nextLink":` cannot occur inside a string (its quotes
would be escaped), and annotations inside rows are prefixed (`name@odata.nextLink`), so a hit is
a key of an object; the Web API writes the page's own link after `value`, so the last hit is it.
"""

from __future__ import annotations

import orjson

NEXT_LINK_KEY = b'"@odata.nextLink":'
# The key in any spelling JSON allows for it but escapes (space before the colon too).
_NEXT_LINK_NAME = b'"@odata.nextLink"'
_SPACE = b" \t\r\n"
_BACKSLASH = 0x5C


def peek_next_link(body: bytes) -> str | None:
    """The last `"@odata.nextLink": "<url>"` of `body`, or None when there is none (or no
    well-formed string follows the key)."""
    at = body.rfind(NEXT_LINK_KEY)
    if at < 0:
        return None
    start = at + len(NEXT_LINK_KEY)
    while start < len(body) and body[start] in _SPACE:
        start += 1
    if body[start : start + 1] != b'"':
        return None
    end = start
    while True:
        end = body.find(b'"', end + 1)
        if end < 0:
            return None
        backslashes = 0
        while body[end - 1 - backslashes] == _BACKSLASH:
            backslashes += 1
        if backslashes % 2 == 0:  # an escaped quote has an odd number of backslashes before it
            break
    try:
        link = orjson.loads(body[start : end + 1])
    except orjson.JSONDecodeError:
        return None
    return link if isinstance(link, str) and link else None


def surely_last(body: bytes) -> bool:
    """True when `body` cannot hold a nextLink: the key's text is nowhere in it. (An escaped
    copy inside a string reads `\\"@odata.nextLink\\"`, which does not match, so text quoting
    the key never hides it; only a key spelled with JSON escapes would, and that is no page the
    Web API writes.)"""
    return _NEXT_LINK_NAME not in body
