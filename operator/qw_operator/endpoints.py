"""What the broker readers share: their error type and how an endpoint URL is split into address and credentials."""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Sequence


class BrokerError(Exception):
    """A broker endpoint could not be read (connection, HTTP status, timeout or an unexpected body)."""


def split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """`http://user:pass@host:15672` -> (`http://host:15672`, Authorization header): credentials never reach a
    log line or an error message."""
    parts = urllib.parse.urlsplit(url)
    auth: dict[str, str] = {}
    if parts.username is not None:
        pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        auth["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", "")), auth


def endpoint_list(raw: str | Sequence[str]) -> list[str]:
    """One broker's endpoints, one per node: `url1|url2` or `url1,url2` (or a list). A single URL is a list of
    one. (A comma in a password is written %2C, as in any URL.)"""
    items = [raw] if isinstance(raw, str) else raw
    return [u.strip() for item in items for u in item.replace(",", "|").split("|") if u.strip()]
