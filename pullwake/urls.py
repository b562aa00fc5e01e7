"""URL building: base URLs with path prefixes, and ids kept inside one segment.

Owns the rules that make hostile ids harmless: an id becomes exactly one
percent-encoded path segment (``/``, ``%``, ``?``, ``#``, spaces and Unicode
encoded; ``.`` and ``..`` encoded so no client or server can resolve them as
dot-segments). URLs built here are already encoded; the HTTP layer sends them
as-is (``yarl.URL(..., encoded=True)``).
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

from .errors import ConfigError

__all__ = ["encode_path", "join_url", "segment", "validate_base_url"]


def segment(value: str) -> str:
    """Percent-encode ``value`` as a single path segment."""
    encoded = quote(value, safe="")
    if encoded in (".", ".."):
        encoded = encoded.replace(".", "%2E")
    return encoded


def encode_path(path: str) -> str:
    """Encode a stream path (``events/a b``) segment by segment, keeping ``/``."""
    return "/".join(segment(p) for p in path.split("/"))


def validate_base_url(url: str, *, field: str = "base_url") -> str:
    """Check ``url`` is an absolute http(s) URL with no query; strip a trailing ``/``."""
    if not isinstance(url, str) or not url:
        raise ConfigError(f"{field} must be a non-empty string")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{field} must be an absolute http(s) URL, got scheme {parts.scheme!r}")
    if parts.query or parts.fragment:
        raise ConfigError(f"{field} must not carry a query or fragment")
    return url.rstrip("/")


def join_url(base: str, path: str) -> str:
    """Append ``path`` (already encoded) to ``base``, keeping base's path prefix."""
    return base.rstrip("/") + "/" + path.lstrip("/")
