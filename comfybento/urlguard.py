"""Outgoing URLs (webhook deliveries, input files by URL): http(s) only, never an internal address unless listed.

One allow-list for both. Entries are host names (`hooks.example.com`,
`*.example.com`) or networks (`10.0.0.0/8`, `127.0.0.1`). With an empty list,
any host that resolves only to public addresses is allowed; loopback, private,
link-local (169.254.169.254, the cloud metadata address), reserved and
multicast addresses never are unless listed, nor IPv6 addresses that carry an
IPv4 one a gateway may reach (NAT64 64:ff9b::/96 and 64:ff9b:1::/48, 6to4
2002::/16, Teredo 2001::/32, IPv4-mapped ::ffff:a.b.c.d and IPv4-compatible
::a.b.c.d). A listed host name admits the addresses
that name resolves to, whatever they are (how a test reaches `localhost`
without opening 127.0.0.1 itself).

No time-of-check/time-of-use gap: `check` resolves the host once and returns
the addresses it approved, and `pinned` makes a request that connects to one
of them (the Host header and TLS server name stay the URL's own, and the
connection is not reused), so a second DNS answer can never send the request
elsewhere. Redirects are never followed
by the HTTP client: whoever follows one checks the new URL again.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

import httpx

from comfybento.errors import InvalidRequest

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# IPv6 ranges that stand for IPv4 addresses (which a translator or relay would reach): internal whatever they embed.
_EMBEDS_IPV4 = tuple(ipaddress.IPv6Network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "2001::/32",
                                                        "::ffff:0:0/96", "::/96"))


def is_internal(address: Address) -> bool:
    """Not a public unicast address: private, loopback, link-local, reserved, multicast, or an IPv6 form of IPv4."""
    if not address.is_global or address.is_multicast:
        return True
    return isinstance(address, ipaddress.IPv6Address) and any(address in net for net in _EMBEDS_IPV4)


class AllowList:
    """Which http(s) URLs may be fetched or posted to; `what` names them in refusals ("webhook url", a field)."""

    def __init__(self, entries: Sequence[str], what: str = "webhook url") -> None:
        self.what = what
        self.hosts = [e.lower() for e in entries if not _is_network(e)]
        self.networks = [ipaddress.ip_network(e, strict=False) for e in entries if _is_network(e)]

    def check(self, url: str, field: str | None = None) -> list[Address]:
        """The addresses `url` may be reached at (resolved now, all approved); InvalidRequest naming the field if none."""
        label = field or self.what
        try:
            parsed = urlsplit(url)
            host = (parsed.hostname or "").lower()
        except ValueError:
            raise InvalidRequest(f"{label}: {url!r} is not a valid URL") from None
        if parsed.scheme not in ("http", "https") or not host:
            raise InvalidRequest(f"{label}: {url!r} must be an http(s) URL")
        addresses = resolve(host)
        if any(fnmatch.fnmatch(host, pattern) for pattern in self.hosts):
            return addresses  # a listed name: whatever it resolves to (nothing yet, maybe; sending then fails)
        if not addresses:
            raise InvalidRequest(f"{label}: host {host!r} of {url!r} does not resolve")
        for address in addresses:
            if any(address in net for net in self.networks):
                continue
            if self.networks or self.hosts or is_internal(address):
                raise InvalidRequest(f"{label}: address {address} of {host!r} ({url!r}) is not in the allow-list "
                                     "(internal addresses are refused unless listed)")
        return addresses

    def refusal_without_dns(self, url: str) -> str | None:
        """Why `url` is refused on its face (scheme, a host name not listed, a literal address not allowed), or None.

        No network: what the front checks at once. `check` (DNS included) still runs before anything is fetched.
        """
        try:
            parsed = urlsplit(url)
            host = (parsed.hostname or "").lower()
        except ValueError:
            return f"{url!r} is not a valid URL"
        if parsed.scheme not in ("http", "https") or not host:
            return f"{url!r} must be an http(s) URL"
        if any(fnmatch.fnmatch(host, pattern) for pattern in self.hosts):
            return None
        try:
            address: Address | None = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            address = None
        if address is not None and any(address in net for net in self.networks):
            return None
        if address is not None and (self.hosts or self.networks or is_internal(address)):
            return f"address {address} ({url!r}) is not in the allow-list (internal addresses are refused unless listed)"
        if address is None and (self.hosts or self.networks):
            return f"host {host!r} of {url!r} is not in the allow-list {[*self.hosts, *map(str, self.networks)]}"
        return None


def _is_network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
        return True
    except ValueError:
        return False


def resolve(host: str) -> list[Address]:
    """Every address of a host (a literal address is itself), IPv4 first; [] if it does not resolve."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return []
    found = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
    return sorted(found, key=lambda a: (a.version, int(a)))


def pinned(request: httpx.Request, address: Address) -> httpx.Request:
    """The same request, connecting to `address` (an approved one); Host and the TLS server name stay the URL's."""
    host = request.url.host
    request.url = request.url.copy_with(host=str(address))
    request.headers["host"] = _host_header(host, request.url.port)
    # Never reused: a pooled connection is keyed by address, and one made (and its certificate checked) for another
    # host name on the same address must not carry this request.
    request.headers["connection"] = "close"
    if request.url.scheme == "https":
        request.extensions = {**request.extensions, "sni_hostname": host}
    return request


def _host_header(host: str, port: int | None) -> str:
    name = f"[{host}]" if ":" in host else host
    return name if port is None else f"{name}:{port}"


def send_checked(client: httpx.Client, request: httpx.Request, addresses: Sequence[Address], stream: bool = False) -> httpx.Response:
    """Send a request to the first approved address that accepts the connection (redirects are not followed)."""
    error = httpx.ConnectError(f"{request.url.host} does not resolve")
    for address in addresses:
        try:
            return client.send(pinned(_copy(request), address), stream=stream, follow_redirects=False)
        except httpx.ConnectError as exc:
            error = exc
    raise error


async def asend_checked(client: httpx.AsyncClient, request: httpx.Request, addresses: Sequence[Address],
                        stream: bool = False) -> httpx.Response:
    """send_checked for an async client."""
    error = httpx.ConnectError(f"{request.url.host} does not resolve")
    for address in addresses:
        try:
            return await client.send(pinned(_copy(request), address), stream=stream, follow_redirects=False)
        except httpx.ConnectError as exc:
            error = exc
    raise error


def _copy(request: httpx.Request) -> httpx.Request:
    return httpx.Request(request.method, request.url, headers=request.headers, content=request.content,
                         extensions=dict(request.extensions))
