"""The URL fetcher behind `GET /api/remove?url=...`, against real HTTP(S) servers on loopback.

Loopback is blocked by the default policy, so tests that need a fetch to succeed pass `allow_loopback`
(127.0.0.1 and nothing else that is_blocked refuses) and a fake resolver that maps names such as
"images.example" to loopback addresses. 127.0.0.2 stays blocked: it plays the internal host.
"""

from __future__ import annotations

import io
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from cutq_runtime.serve.urlfetch import FetchLimits, UrlRefused, UrlTimeout, UrlTooLarge, fetch, is_blocked

LIMITS = FetchLimits(max_bytes=100_000, timeout=3.0)
LOOPBACK = ipaddress.ip_address("127.0.0.1")


def allow_loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip != LOOPBACK and is_blocked(ip)


class FakeDNS:
    """getaddrinfo's signature; `answers` maps a name to its addresses, or to a function of the call's number."""

    def __init__(self, answers: dict[str, list[str] | Callable[[int], list[str]]]) -> None:
        self.answers, self.calls = answers, []

    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):
        self.calls.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        ips = self.answers[host]
        ips = ips(len(self.calls)) if callable(ips) else ips
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ips]


def no_dns(*args, **kwargs):
    raise AssertionError("a literal IP was resolved")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.hits.append((self.path, dict(self.headers)))
        try:
            self.server.app(self)
        except OSError:  # the client hung up, as the fetcher does on purpose
            self.close_connection = True

    def log_message(self, *args) -> None:
        pass


def reply(h: Handler, body: bytes = b"", status: int = 200, headers: dict[str, str] | None = None, length: bool = True) -> None:
    h.send_response(status)
    for key, value in (headers or {}).items():
        h.send_header(key, value)
    if length:
        h.send_header("Content-Length", str(len(body)))
    else:
        h.close_connection = True  # no length, not chunked: the body ends when the connection does
    h.end_headers()
    h.wfile.write(body)


@pytest.fixture
def serve():
    """Starts servers on demand: serve(app, host) -> server with .port, .hits and .release (an Event that
    apps which stall wait on, set at teardown)."""
    servers, release = [], threading.Event()

    def start(app: Callable[[Handler], None], host: str = "127.0.0.1", tls: ssl.SSLContext | None = None):
        try:
            server = ThreadingHTTPServer((host, 0), Handler)
        except OSError:
            pytest.skip(f"cannot listen on {host}")
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        server.app, server.hits, server.release, server.port = app, [], release, server.server_address[1]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    release.set()
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 90)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("address", "blocked"), [
    ("10.0.0.1", True), ("192.168.1.1", True), ("100.64.0.1", True), ("0.1.2.3", True), ("127.0.0.1", True),
    ("169.254.169.254", True), ("224.0.0.1", True), ("255.255.255.255", True), ("::1", True), ("fe80::1", True),
    ("::ffff:10.0.0.1", True), ("2002:c0a8:0101::", True), ("64:ff9b::a00:1", True), ("::", True),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", True),  # Teredo
    ("8.8.8.8", False), ("2606:4700::1111", False), ("2002:808:808::", False),  # 6to4 of a public address
])
def test_is_blocked(address: str, blocked: bool) -> None:
    assert is_blocked(ipaddress.ip_address(address)) is blocked


@pytest.mark.parametrize("template", [
    "http://127.0.0.1:{port}/", "http://localhost:{port}/", "http://0.0.0.0:{port}/", "http://[::1]:{port}/",
    "http://[::ffff:127.0.0.1]:{port}/", "http://169.254.169.254/latest/meta-data/",
    "http://2130706433:{port}/", "http://0x7f.1:{port}/",  # inet_aton spellings: checked as the resolver reads them
])
def test_default_policy_refuses_internal_hosts(serve, png: bytes, template: str) -> None:
    server = serve(lambda h: reply(h, png))  # answers on 127.0.0.1 (0.0.0.0 reaches it too): a refusal must not
    with pytest.raises(UrlRefused, match="non-public"):
        fetch(template.format(port=server.port), LIMITS)
    assert server.hits == []


@pytest.mark.parametrize("template", [
    "ftp://images.example:{port}/a.png", "file:///etc/passwd", "gopher://images.example:{port}/",
    "//images.example:{port}/", "http:///a.png",
    "http://user:pass@images.example:{port}/", "http://user@images.example:{port}/", "http://:pass@images.example:{port}/",
])
def test_refuses_other_schemes_and_credentials(serve, png: bytes, template: str) -> None:
    server = serve(lambda h: reply(h, png))  # reachable under the permissive policy: only the URL's form refuses
    with pytest.raises(UrlRefused):
        fetch(template.format(port=server.port), LIMITS, resolve=FakeDNS({"images.example": ["127.0.0.1"]}),
              blocked=allow_loopback)
    assert server.hits == []


def test_fetch_returns_the_exact_bytes(serve, png: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):  # the environment's proxies are not used
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    server = serve(lambda h: reply(h, png, headers={"Content-Type": "image/png", "Set-Cookie": "a=b"}))
    dns = FakeDNS({"images.example": ["127.0.0.1"]})
    assert fetch(f"http://images.example:{server.port}/cat.png?size=8", LIMITS, resolve=dns, blocked=allow_loopback) == png
    (path, headers), = server.hits
    assert path == "/cat.png?size=8" and headers["Host"] == f"images.example:{server.port}"
    assert not {"Cookie", "Authorization", "Proxy-Authorization"} & set(headers)
    assert dns.calls == ["images.example"]
    assert fetch(f"http://127.0.0.1:{server.port}/", LIMITS, resolve=no_dns, blocked=allow_loopback) == png
    assert fetch(f"http://127.0.0.1:{server.port}/a cat/ü.png?q=x y", LIMITS, resolve=no_dns, blocked=allow_loopback) == png
    assert server.hits[-1][0] == "/a%20cat/%C3%BC.png?q=x%20y"  # quoted as a browser would, not refused


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_followed(serve, png: bytes, status: int) -> None:
    def app(h: Handler) -> None:
        if h.path == "/start":
            reply(h, status=status, headers={"Location": "/next"})  # relative: joined with the current URL
        elif h.path == "/next":
            reply(h, status=status, headers={"Location": f"http://127.0.0.1:{h.server.port}/final"})
        else:
            reply(h, png)

    server = serve(app)
    dns = FakeDNS({"images.example": ["127.0.0.1"]})
    assert fetch(f"http://images.example:{server.port}/start", LIMITS, resolve=dns, blocked=allow_loopback) == png
    assert [path for path, _ in server.hits] == ["/start", "/next", "/final"]


@pytest.mark.parametrize("target", ["http://127.0.0.2:{port}/meta", "http://internal.example:{port}/meta"])
def test_redirect_to_a_blocked_host_is_refused_before_connecting(serve, png: bytes, target: str) -> None:
    internal = serve(lambda h: reply(h, png), host="127.0.0.2")  # would answer, were it ever reached
    public = serve(lambda h: reply(h, status=302, headers={"Location": target.format(port=internal.port)}))
    dns = FakeDNS({"images.example": ["127.0.0.1"], "internal.example": ["127.0.0.2"]})
    with pytest.raises(UrlRefused, match="non-public"):
        fetch(f"http://images.example:{public.port}/", LIMITS, resolve=dns, blocked=allow_loopback)
    assert len(public.hits) == 1 and internal.hits == []


def test_redirect_loop_stops_at_max_redirects(serve) -> None:
    server = serve(lambda h: reply(h, status=302, headers={"Location": "/again"}))
    with pytest.raises(UrlRefused, match="more than 3 redirects"):
        fetch(f"http://127.0.0.1:{server.port}/", FetchLimits(max_bytes=1000, max_redirects=3), blocked=allow_loopback)
    assert len(server.hits) == 4  # the first request and three redirects


@pytest.mark.parametrize(("status", "headers", "match"), [
    (302, {}, "without a Location"), (404, {}, "HTTP 404"), (500, {}, "HTTP 500"), (304, {"Location": "/"}, "HTTP 304"),
])
def test_refuses_other_answers(serve, status: int, headers: dict[str, str], match: str) -> None:
    server = serve(lambda h: reply(h, b"not an image", status=status, headers=headers))
    with pytest.raises(UrlRefused, match=match):
        fetch(f"http://127.0.0.1:{server.port}/", LIMITS, blocked=allow_loopback)
    assert len(server.hits) == 1


def test_content_length_over_the_limit_is_refused_before_reading(serve) -> None:
    def app(h: Handler) -> None:  # announces a body, then sends none: reading it would time out instead
        h.send_response(200)
        h.send_header("Content-Length", "100001")
        h.end_headers()
        h.server.release.wait(5)

    server = serve(app)
    with pytest.raises(UrlTooLarge, match="announced 100001 bytes"):
        fetch(f"http://127.0.0.1:{server.port}/", FetchLimits(max_bytes=100_000, timeout=2), blocked=allow_loopback)


@pytest.mark.parametrize("chunked", [True, False])
def test_a_body_over_the_limit_is_cut_off_as_it_arrives(serve, chunked: bool) -> None:
    def app(h: Handler) -> None:  # more than the limit, then a stall that waiting for the rest would sit out
        h.send_response(200)
        h.send_header("Transfer-Encoding", "chunked") if chunked else None
        h.end_headers()
        h.wfile.write(b"%x\r\n%s\r\n" % (1500, b"x" * 1500) if chunked else b"x" * 1500)
        h.server.release.wait(5)
        h.close_connection = True

    server = serve(app)
    start = time.monotonic()
    with pytest.raises(UrlTooLarge, match="larger than the limit of 1000"):
        fetch(f"http://127.0.0.1:{server.port}/", FetchLimits(max_bytes=1000, timeout=4), blocked=allow_loopback)
    assert time.monotonic() - start < 2  # well before the deadline: it did not wait for the stalled rest


@pytest.mark.parametrize("chunked", [True, False])
def test_a_body_of_exactly_the_limit_passes(serve, chunked: bool) -> None:
    def app(h: Handler) -> None:
        if not chunked:
            return reply(h, b"y" * 1000, length=False)
        h.send_response(200)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        h.wfile.write(b"".join(b"%x\r\n%s\r\n" % (n, b"y" * n) for n in (300, 700, 0)))

    server = serve(app)
    assert fetch(f"http://127.0.0.1:{server.port}/", FetchLimits(max_bytes=1000), blocked=allow_loopback) == b"y" * 1000


def test_a_truncated_body_is_refused(serve) -> None:
    def app(h: Handler) -> None:
        reply(h, b"z" * 500, headers={"Content-Length": "1000"}, length=False)

    server = serve(app)
    with pytest.raises(UrlRefused, match="500 bytes short"):
        fetch(f"http://127.0.0.1:{server.port}/", LIMITS, blocked=allow_loopback)


@pytest.mark.parametrize("phase", ["silent", "headers", "body"])
def test_the_timeout_is_a_deadline_for_the_whole_fetch(serve, phase: str) -> None:
    def app(h: Handler) -> None:  # silent; or a byte every 50 ms for 4 s, which no per-read timeout of 0.5 s trips
        h.close_connection = True
        if phase == "silent":
            h.server.release.wait(4)
            return
        h.wfile.write(b"HTTP/1.1 200 OK\r\n" + (b"" if phase == "headers" else b"\r\n"))
        for _ in range(80):
            if h.server.release.wait(0.05):
                return
            h.wfile.write(b"X" if phase == "headers" else b"x")
        h.wfile.write(b": y\r\n\r\n" if phase == "headers" else b"")

    server = serve(app)
    start = time.monotonic()
    with pytest.raises(UrlTimeout, match=r"timed out after 0\.5 s"):
        fetch(f"http://127.0.0.1:{server.port}/", FetchLimits(max_bytes=100_000, timeout=0.5), blocked=allow_loopback)
    assert time.monotonic() - start < 3


def test_dns_rebinding_connects_to_the_checked_address(serve, png: bytes) -> None:
    server = serve(lambda h: reply(h, png))
    dns = FakeDNS({"images.example": lambda call: ["127.0.0.1"] if call == 1 else ["10.0.0.1"]})
    assert fetch(f"http://images.example:{server.port}/", LIMITS, resolve=dns, blocked=allow_loopback) == png
    assert len(server.hits) == 1 and dns.calls == ["images.example"]


def test_every_hop_is_resolved_once_and_checked(serve, png: bytes) -> None:
    server = serve(lambda h: reply(h, status=302, headers={"Location": "/b"}) if h.path == "/a" else reply(h, png))
    dns = FakeDNS({"images.example": ["127.0.0.1"]})
    assert fetch(f"http://images.example:{server.port}/a", LIMITS, resolve=dns, blocked=allow_loopback) == png
    assert dns.calls == ["images.example"] * 2

    rebinding = FakeDNS({"images.example": lambda call: ["127.0.0.1"] if call == 1 else ["10.0.0.1"]})
    with pytest.raises(UrlRefused, match="non-public"):
        fetch(f"http://images.example:{server.port}/a", LIMITS, resolve=rebinding, blocked=allow_loopback)
    assert [path for path, _ in server.hits] == ["/a", "/b", "/a"]


@pytest.mark.parametrize("answers", [["127.0.0.1", "10.0.0.1"], ["10.0.0.1", "127.0.0.1"], ["127.0.0.1", "::1"], []])
def test_a_name_with_any_blocked_address_is_refused(serve, png: bytes, answers: list[str]) -> None:
    server = serve(lambda h: reply(h, png))
    with pytest.raises(UrlRefused):
        fetch(f"http://images.example:{server.port}/", LIMITS, resolve=FakeDNS({"images.example": answers}),
              blocked=allow_loopback)
    assert server.hits == []


def test_an_unresolvable_name_is_refused() -> None:
    with pytest.raises(UrlRefused, match=r"could not resolve nowhere\.example"):
        fetch("http://nowhere.example/", LIMITS, resolve=FakeDNS({}))


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA and a certificate for images.example it signed, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command")
    d = tmp_path_factory.mktemp("tls")
    (d / "ext.cnf").write_text("subjectAltName=DNS:images.example\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for cmd in (["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=cutq test CA"],
                ["req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=images.example"],
                ["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
                 "-extfile", "ext.cnf", "-out", "leaf.pem"]):
        subprocess.run(["openssl", *cmd], cwd=d, check=True, capture_output=True)
    return d


def test_https_connects_to_the_checked_address_with_the_hostname_for_sni_and_certificate(
        serve, png: bytes, certificates: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates / "ca.pem"))  # the default context trusts the test CA
    context, sni = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), []
    context.load_cert_chain(certificates / "leaf.pem", certificates / "leaf.key")
    context.sni_callback = lambda _sock, name, _ctx: sni.append(name)
    server = serve(lambda h: reply(h, png), tls=context)
    dns = FakeDNS({"images.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]})
    assert fetch(f"https://images.example:{server.port}/", LIMITS, resolve=dns, blocked=allow_loopback) == png
    assert sni == ["images.example"] and server.hits[0][1]["Host"] == f"images.example:{server.port}"

    with pytest.raises(UrlRefused, match=r"certificate of other\.example"):  # same server and address, other name
        fetch(f"https://other.example:{server.port}/", LIMITS, resolve=dns, blocked=allow_loopback)
    assert len(server.hits) == 1
