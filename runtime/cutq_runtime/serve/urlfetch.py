"""Fetch an image by URL for the rembg-compatible `GET /api/remove?url=...` without becoming an SSRF proxy.

rembg's own URL endpoint drew three advisories: it followed redirects to internal hosts (a public URL answers 302
to, say, the metadata service at 169.254.169.254), DNS rebinding undid its hostname check (public when checked,
internal when the HTTP library resolved the name again to connect), and it answered credentialed CORS, so any web
page could drive it. The third is the server's to avoid; this module closes the first two: every hop, redirects
included, is resolved once here, refused if any of its addresses is non-public, and connected to an address that
passed. No cookies, proxies or credentials are ever sent, and one deadline covers the whole fetch.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

REDIRECTS = frozenset({301, 302, 303, 307, 308})
CHUNK = 64 * 1024
# Shared address space (CGNAT) and "this network": `not is_global` covers both today; named so the policy does not
# rest on one stdlib table alone.
EXTRA_BLOCKED = (ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("0.0.0.0/8"))
NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int  # refuse bodies larger than this (Content-Length up front, and while reading)
    timeout: float = 10.0  # seconds for the whole fetch, all redirects included (a deadline, not per-read)
    max_redirects: int = 5


class UrlRefused(Exception):
    """The URL was not fetched; the message says why and names the URL's host."""


class UrlTooLarge(UrlRefused):
    """The body is, or announced it would be, larger than FetchLimits.max_bytes."""


class UrlTimeout(UrlRefused):
    """The deadline passed before the body was complete."""


def is_blocked(ip: IPAddress) -> bool:
    """True unless `ip` is a plain public unicast address. An IPv6 transition address stands for an IPv4 one that
    the packets really reach (IPv4-mapped, 6to4, Teredo client, NAT64), so wrapper and embedded must both pass."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and is_blocked(embedded):
            return True
    elif any(ip in net for net in EXTRA_BLOCKED):
        return True
    return (not ip.is_global or ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved
            or ip.is_multicast or ip.is_unspecified)


class _Deadline:
    """One deadline for the whole fetch. A socket timeout bounds each recv, not the total, so a server trickling
    a byte at a time would hold a worker forever; a timer shuts the live connection down when time is up instead.
    It holds a duplicate of the socket: http.client drops its own reference once a response owns the connection."""

    def __init__(self, seconds: float) -> None:
        self.end, self.expired = time.monotonic() + seconds, False
        self.sock: socket.socket | None = None
        self.lock = threading.Lock()  # the timer never shuts down a descriptor that is being closed
        self.timer = threading.Timer(seconds, self.expire)
        self.timer.daemon = True

    def remaining(self) -> float:
        return 0.0 if self.expired else max(0.0, self.end - time.monotonic())

    def watch(self, sock: socket.socket) -> None:
        with self.lock:
            self.sock = sock.dup()
            if self.expired:  # it expired while connecting, before there was a socket to shut down
                raise TimeoutError

    def expire(self) -> None:
        with self.lock:
            self.expired = True
            if self.sock is not None:
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)

    def unwatch(self) -> None:
        with self.lock:
            if self.sock is not None:
                self.sock.close()
                self.sock = None


class _PinnedConnection(http.client.HTTPConnection):
    """Connects to addresses that already passed `blocked`: left to itself http.client would resolve the name
    again, and a rebinding DNS server answers differently the second time. The Host header and TLS (SNI and the
    certificate check) still use the URL's hostname."""

    def __init__(self, host: str, port: int, ips: list[str], tls: bool, deadline: _Deadline) -> None:
        super().__init__(host, port, timeout=deadline.remaining())
        self.ips, self.tls, self.deadline, self.default_port = ips, tls, deadline, 443 if tls else 80

    def connect(self) -> None:
        error = OSError(f"no address for {self.host}")
        for ip in self.ips:  # all of them passed the check; the next one is a fallback, as in a browser
            try:
                self.sock = socket.create_connection((ip, self.port), self.timeout)
                break
            except OSError as exc:
                error = exc
        else:
            raise error
        self.deadline.watch(self.sock)  # before the TLS handshake, so a stalled handshake is cut off too
        if self.tls:
            self.sock = ssl.create_default_context().wrap_socket(self.sock, server_hostname=self.host)


def _check(url: str, resolve: Callable[..., Any], blocked: Callable[[IPAddress], bool]) -> tuple[str, int, list[str], str]:
    """Validates one hop; returns (host, port, addresses to connect to, request path)."""
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("http", "https"):
        raise UrlRefused(f"refusing {host or url[:50]!r}: only http and https URLs are fetched, not {parts.scheme!r}")
    if not host:
        raise UrlRefused(f"refusing {url[:50]!r}: the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused(f"refusing {host}: the URL carries credentials (user:pass@)")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise UrlRefused(f"refusing {host}: bad port") from exc
    try:
        ips = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            host = host.encode("idna").decode("ascii")  # the Host header and SNI are ASCII
            infos = resolve(host, port, type=socket.SOCK_STREAM)
            ips = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        except (OSError, UnicodeError, ValueError, IndexError) as exc:
            raise UrlRefused(f"could not resolve {host}") from exc
    # Any non-public answer refuses the host: which of its addresses a connection ends up on is not ours to choose.
    if not ips or any(blocked(ip) for ip in ips):
        raise UrlRefused(f"refusing {host}: it is or resolves to a private, loopback or otherwise non-public address")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return host, port, [str(ip) for ip in ips], quote(path, safe="/?%:@!$&'()*+,;=~[]")  # as a browser sends it


def fetch(url: str, limits: FetchLimits, *, resolve: Callable[..., Any] = socket.getaddrinfo,
          blocked: Callable[[IPAddress], bool] = is_blocked) -> bytes:
    """GETs `url`, following redirects that pass the same checks, and returns at most limits.max_bytes of body.
    Raises UrlRefused, or its subclasses UrlTooLarge and UrlTimeout."""
    deadline, host = _Deadline(limits.timeout), urlsplit(url).hostname
    deadline.timer.start()
    try:
        for _ in range(limits.max_redirects + 1):
            host, port, ips, path = _check(url, resolve, blocked)
            if not deadline.remaining():  # resolving cannot be interrupted; this check after it is the best we get
                raise UrlTimeout(f"timed out after {limits.timeout:g} s resolving {host}")
            conn = _PinnedConnection(host, port, ips, urlsplit(url).scheme == "https", deadline)
            try:
                location, body = _get(conn, path, limits, deadline)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if deadline.expired or isinstance(exc, TimeoutError):
                    raise UrlTimeout(f"timed out after {limits.timeout:g} s fetching from {host}") from exc
                if isinstance(exc, ssl.SSLCertVerificationError):
                    raise UrlRefused(f"the TLS certificate of {host} was not accepted: {exc.verify_message}") from exc
                raise UrlRefused(f"could not fetch from {host}: {exc or type(exc).__name__}") from exc
            finally:
                deadline.unwatch()
                conn.close()
            if location is None:
                return body
            url = urljoin(url, location)
        raise UrlRefused(f"more than {limits.max_redirects} redirects, the last from {host}")
    finally:
        deadline.timer.cancel()


def _get(conn: _PinnedConnection, path: str, limits: FetchLimits, deadline: _Deadline) -> tuple[str | None, bytes]:
    """One request: (Location, b"") for a redirect, else (None, body)."""
    conn.request("GET", path, headers={"User-Agent": "cutq-runtime", "Accept": "image/*"})
    with conn.getresponse() as response:
        if response.status in REDIRECTS:
            if not (location := response.getheader("Location", "").strip()):
                raise UrlRefused(f"{conn.host} answered HTTP {response.status} without a Location")
            return location, b""
        if not 200 <= response.status < 300:
            raise UrlRefused(f"{conn.host} answered HTTP {response.status} {response.reason}".rstrip())
        if response.length is not None and response.length > limits.max_bytes:
            raise UrlTooLarge(f"{conn.host} announced {response.length} bytes, more than the limit of {limits.max_bytes}")
        body = bytearray()
        while chunk := response.read1(CHUNK):  # read1 returns what has arrived, never waits to fill CHUNK
            body += chunk
            if len(body) > limits.max_bytes:
                raise UrlTooLarge(f"the body from {conn.host} is larger than the limit of {limits.max_bytes} bytes")
        if deadline.expired:  # the shutdown can look like an ordinary end of the body
            raise TimeoutError
        if response.length:
            raise UrlRefused(f"the body from {conn.host} ended {response.length} bytes short of its Content-Length")
        return None, bytes(body)
