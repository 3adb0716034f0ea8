"""Which webhook targets covey may call: URL checks and public-address checks.

A webhook URL comes from a user of the service that runs covey, so it is
untrusted: pointed at ``127.0.0.1``, ``10.0.0.5`` or the cloud metadata address
``169.254.169.254`` it would let that user make the service call its own
private network (server-side request forgery). :func:`check_url` refuses
malformed URLs and private IP literals when an endpoint is registered;
:func:`is_public` is the address rule that the transport
(:mod:`covey.webhooks._transport`) applies again to every address a host name
resolves to, at connect time, because DNS answers can change after
registration.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import unicodedata
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import yarl

from covey.core import Reason, WebhookError
from covey.core.runtime import invalid_argument

MAX_URL_BYTES = 2048
"""The longest webhook URL accepted, in UTF-8 bytes."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""Resolves ``(host, port)`` to IP address strings, in the order to try them."""

# Cloud instance-metadata services: AWS/GCP/Azure, AWS ECS tasks, Alibaba,
# Oracle, AWS over IPv6. Most fall in ranges refused anyway; listing them keeps
# the rule true if those ranges are ever narrowed.
_METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "192.0.0.192",
              "fd00:ec2::254")
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPAT = ipaddress.ip_network("::/96")
# The characters of the numeric IPv4 forms inet_aton (and so getaddrinfo) accepts:
# "2130706433", "0x7f.1", "127.1", "0177.0.0.1".
_NUMERIC_HOST = re.compile(r"[0-9a-fx.]+")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries and is routed to, if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _V4_COMPAT and int(address) > 1):
        # NAT64 (RFC 6052) and the deprecated IPv4-compatible form (::a.b.c.d)
        # both keep the IPv4 address in the low 32 bits.
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """Whether ``address`` is a public unicast address a webhook may be sent to.

    ``ipaddress``' ``is_global`` is the base; on top of it this refuses multicast,
    reserved, site-local and metadata addresses, and judges IPv6 forms that embed
    an IPv4 address (``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4
    ``2002::/16``, ``::a.b.c.d``) by the IPv4 address they lead to.

    Args:
        address: the address to judge.

    Returns:
        False for loopback, private, link-local, CGNAT, unspecified, multicast,
        reserved, broadcast and metadata addresses; True otherwise.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public(embedded)
        if address.scope_id is not None:
            address = ipaddress.IPv6Address(address.compressed.split("%", 1)[0])
        if address.is_site_local:
            return False
    elif address in _CGNAT:
        return False
    return (
        address.is_global
        and not address.is_multicast
        and not address.is_reserved
        and not address.is_link_local
        and not address.is_loopback
        and not address.is_unspecified
        and address not in _METADATA
    )


def ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` denotes when it is an IP literal, else None.

    Includes the numeric IPv4 forms resolvers accept (``2130706433``,
    ``0x7f.1``, ``127.1``), which ``ipaddress`` alone does not parse.
    """
    if _NUMERIC_HOST.fullmatch(host.lower()):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _has_invisible(url: str) -> bool:
    # Category "C" holds control, format (zero-width), surrogate and unassigned
    # characters: none belongs in a URL, and some hide what the URL points at.
    return any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in url)


def check_url(url: object, *, allow_private: bool) -> str:
    """Check a webhook target URL; return it unchanged.

    Args:
        url: the URL as given by the caller.
        allow_private: accept IP literals that are not public (tests, internal
            deployments).

    Returns:
        ``url`` exactly as given.

    Raises:
        ClusterError: ``invalid_argument`` (``details["field"] == "url"``): not a
            string, longer than :data:`MAX_URL_BYTES`, whitespace or control
            characters, a scheme other than http/https, no host, user
            information, a fragment, a port outside 1-65535, or not parseable.
        WebhookError: ``webhook_target_refused``: the host is an IP literal that
            is not public and ``allow_private`` is false (``details``: ``url``,
            ``address``).
    """
    if not isinstance(url, str):
        raise invalid_argument("url", f"must be a str, not {type(url).__name__}")
    if len(url.encode("utf-8", "surrogatepass")) > MAX_URL_BYTES:
        raise invalid_argument("url", f"longer than {MAX_URL_BYTES} bytes")
    if _has_invisible(url):
        raise invalid_argument("url", "contains whitespace or control characters")
    if "#" in url:
        raise invalid_argument("url", "must not have a fragment")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise invalid_argument("url", f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise invalid_argument("url", "scheme must be http or https")
    if "@" in parts.netloc:
        raise invalid_argument("url", "must not carry a user name or password")
    host = parts.hostname
    if not host:
        raise invalid_argument("url", "has no host")
    if port is not None and not 1 <= port <= 65535:
        raise invalid_argument("url", "port must be between 1 and 65535")
    try:
        # the host the client will connect to: yarl normalises it (fullwidth digits,
        # ideographic dots), so it, not urlsplit's raw text, is what gets checked
        host = yarl.URL(url).raw_host or ""
    except ValueError as exc:
        raise invalid_argument("url", f"not a valid URL ({exc})") from None
    address = ip_literal(host)
    if address is not None and not allow_private and not is_public(address):
        raise WebhookError(f"webhook target {address} is not a public address",
                           reason=Reason.WEBHOOK_TARGET_REFUSED, url=url,
                           address=str(address))
    if address is not None and address.version == 4 and str(address) != host:
        # "134744072", "0x8.8.8.8": resolvers accept them, HTTP clients do not
        raise invalid_argument("url", f"write the address as {address}")
    return url


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve ``host`` with the system resolver (``getaddrinfo``).

    Args:
        host: the host name (or IP literal) to resolve.
        port: the port, passed on to ``getaddrinfo``.

    Returns:
        The distinct addresses, in the resolver's order.

    Raises:
        OSError: ``socket.gaierror`` when the name does not resolve.
    """
    infos = await asyncio.get_running_loop().getaddrinfo(host, port,
                                                        type=socket.SOCK_STREAM)
    addresses: dict[str, None] = {}
    for *_, sockaddr in infos:
        addresses.setdefault(str(sockaddr[0]), None)
    return list(addresses)
