"""URL building: base URLs with path prefixes, and ids kept inside one segment.

Owns the rules that make hostile ids harmless: an id becomes exactly one
percent-encoded path segment (``/``, ``%``, ``?``, ``#``, spaces and Unicode
encoded; ``.`` and ``..`` encoded so no client or server can resolve them as
dot-segments). URLs built here are already encoded; the HTTP layer sends them
as-is (``yarl.URL(..., encoded=True)``).
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

from pullwake.errors import ConfigError

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
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unbalanced '[' in the host
        raise ConfigError(f"{field} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        got = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        hint = f" (did you mean http://{url}?)" if "://" not in url and "@" not in url else ""
        raise ConfigError(f"{field} must be an absolute http(s) URL, got {got}{hint}")
    if not parts.hostname:
        raise ConfigError(f"{field} has no host (expected e.g. http://127.0.0.1:4437/v1/stream)")
    try:
        port = parts.port
    except ValueError:
        raw = parts.netloc.rsplit("@", 1)[-1].rpartition(":")[2]
        raise ConfigError(f"{field} has a bad port {raw!r} (expected 1-65535)") from None
    if port == 0:
        raise ConfigError(f"{field} has a bad port 0 (expected 1-65535)")
    if parts.query or parts.fragment:
        raise ConfigError(f"{field} must not carry a query or fragment")
    return url.rstrip("/")


def join_url(base: str, path: str) -> str:
    """Append ``path`` (already encoded) to ``base``, keeping base's path prefix."""
    return base.rstrip("/") + "/" + path.lstrip("/")
