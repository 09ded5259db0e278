"""Which broker to connect to: `QW_RABBITMQ_URL` as a list of nodes, in the order a client should try them.

`QW_RABBITMQ_URL` holds one amqp URL or several, comma-separated (the nodes of one cluster; percent-encode a comma
in a password as %2C). A plain `amqp://` URL whose host name resolves to several addresses (a headless Service,
round-robin DNS) stands for one node per address. `amqps://` URLs are left as written: the certificate names the
host, not its addresses (the client libraries try every address of a name in turn by themselves).

Every client asks for `connect_order()` on each (re)connect and tries the URLs in that order until one answers:
the order is shuffled by a per-process random generator, so many processes spread over the nodes, and the node a
client just lost goes last, so a failover does not start by waiting on the dead node. Names are resolved again
each time: the addresses behind a name change when nodes are replaced.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

SCHEMES = {"amqp": 5672, "amqps": 5671}
PLAIN = {"amqp": 5672}  # what expand() expands by default: not amqps, whose certificate names the host

Resolver = Callable[[str, int], list[str]]


def parse_urls(raw: str) -> list[str]:
    """The URLs in a comma-separated `QW_RABBITMQ_URL`, in the order written; ValueError if one is not amqp(s)."""
    urls = [u.strip() for u in raw.split(",") if u.strip()]
    if not urls:
        raise ValueError("QW_RABBITMQ_URL is empty: give one amqp:// URL, or several separated by commas")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise ValueError(f"QW_RABBITMQ_URL: {redact(url)!r} is not an amqp:// or amqps:// URL with a host")
    return urls


def redact(url: str) -> str:
    """scheme://host:port of a URL, without its credentials: safe to log."""
    try:
        parts = urlsplit(url)
        port = parts.port or SCHEMES.get(parts.scheme, 0)
    except ValueError:
        return "<unparsable URL>"
    host = parts.hostname or ""
    return f"{parts.scheme}://{_bracket(host)}:{port}"


def resolve(host: str, port: int) -> list[str]:
    """The host's TCP addresses in the resolver's order, without repeats; [] when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def expand(urls: Sequence[str], resolver: Resolver = resolve, schemes: Mapping[str, int] = PLAIN) -> list[str]:
    """One URL per node: a URL of a plain-text scheme (`schemes`: name -> default port; amqp:// unless told, the
    operator passes http://) whose host name has several addresses becomes one URL per address (same
    credentials, path and options). IP literals, TLS schemes (the certificate names the host) and names with one
    address (or none: the client then reports the failure when it connects) stay as they are. Repeats are
    dropped."""
    out: list[str] = []
    for url in urls:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme not in schemes or _is_ip(host):
            out.append(url)
            continue
        addresses = resolver(host, parts.port or schemes[parts.scheme])
        if len(addresses) < 2:
            out.append(url)
            continue
        userinfo, _, _ = parts.netloc.rpartition("@")
        port = f":{parts.port}" if parts.port else ""
        for address in addresses:
            netloc = f"{userinfo}@" if userinfo else ""
            out.append(urlunsplit(parts._replace(netloc=f"{netloc}{_bracket(address)}{port}")))
    return list(dict.fromkeys(out))


def connect_order(
    urls: Sequence[str], rng: random.Random, lost: str | None = None, resolver: Resolver = resolve
) -> list[str]:
    """The order to try the nodes in on this (re)connect: expanded, shuffled, the node just `lost` last."""
    order = expand(urls, resolver)
    rng.shuffle(order)
    if lost in order and len(order) > 1:
        order.remove(lost)
        order.append(lost)
    return order


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
