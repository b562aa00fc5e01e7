"""What a catch-up cache may keep, and under which key (PROTOCOL.md §4, §10; no I/O).

Catch-up data is immutable ("bytes at a given offset never change"), so the
answer to "the data from offset X" may be kept, as long as nothing
time-dependent is kept with it and one credential's answer never serves
another. These rules are the policy of :mod:`pullwake.io.cache`, written on
plain values (method, URL, status, headers, body) so they are tested without
a session.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["DEFAULT_MAX_ENTRY_BYTES", "cache_key", "is_cacheable", "is_catchup",
           "is_credential", "redact_url"]

#: A larger response is passed through, never stored.
DEFAULT_MAX_ENTRY_BYTES = 32 * 1024 * 1024

#: Always credentials (lower case); any header whose name matches the pattern too.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key",
                                "x-api-token", "x-auth-token", "x-access-token"})
_CREDENTIAL_NAME_RE = re.compile(r"auth|token|secret|passw|session|cookie|signature|credential"
                                 r"|tenant|api[-_]?key|(?:^|[-_])key$", re.IGNORECASE)
#: Query parameters whose values are secrets: part of the key, redacted when stored.
SECRET_QUERY_KEYS = frozenset({"token", "access_token", "auth", "authorization", "key",
                               "api_key", "apikey", "secret", "password", "signature", "sig"})
#: Answer headers that are facts about the moment, not about the bytes: never stored.
MOMENT_HEADERS = ("Stream-Up-To-Date",)
_KEY_VERSION = "pullwake-fetch-cache-v2"  # bump when the key or the stored format changes


def _offsets(url: str) -> tuple[list[str], bool]:
    params = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    return [v for k, v in params if k == "offset"], any(k == "live" for k, _ in params)


def is_catchup(method: str, url: str) -> bool:
    """A ``GET`` with exactly one ``offset`` (not ``now``) and no ``live``."""
    if method != "GET":
        return False
    try:
        offsets, live = _offsets(url)
    except ValueError:
        return False
    return len(offsets) == 1 and offsets[0] not in ("", "now") and not live


def is_cacheable(method: str, url: str, status: int, headers: Mapping[str, str], body: bytes,
                 max_entry_bytes: int) -> bool:
    """A data-bearing catch-up chunk: 200, the offset moved, a body neither empty nor
    ``[]`` and at most ``max_entry_bytes``, no ``Set-Cookie``, no ``no-store``."""
    if status != 200 or not is_catchup(method, url):
        return False
    if headers.get("Stream-Next-Offset") in (None, _offsets(url)[0][0]):
        return False
    if "Set-Cookie" in headers or "no-store" in headers.get("Cache-Control", "").lower():
        return False
    return 0 < len(body) <= max_entry_bytes and body.strip() not in (b"", b"[]")


def is_credential(name: str, extra: Iterable[str] = ()) -> bool:
    low = name.lower()
    return low in CREDENTIAL_HEADERS or low in extra or bool(_CREDENTIAL_NAME_RE.search(low))


def cache_key(method: str, url: str, headers: Mapping[str, str], extra: Iterable[str]) -> str:
    """Method, URL (secret query values included) and every credential header value."""
    extra = frozenset(extra)
    creds = sorted((k.lower(), str(v)) for k, v in headers.items() if is_credential(k, extra))
    material = "\n".join([_KEY_VERSION, method, url, *(f"{k}: {v}" for k, v in creds)])
    return hashlib.sha256(material.encode("utf-8", "surrogateescape")).hexdigest()


def redact_url(url: str) -> str:
    """``url`` with secret query values replaced (what a stored copy keeps)."""
    parts = urlsplit(url)
    query = urlencode([(k, "REDACTED" if k.lower() in SECRET_QUERY_KEYS else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)])
    return urlunsplit(parts._replace(query=query))
