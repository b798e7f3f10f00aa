"""A fault-injecting HTTP proxy between pitr and the test S3 server (pure stdlib).

pitr's config points ``repository.endpoint_url`` at the proxy (plain HTTP on
127.0.0.1); the proxy forwards every request to the real SeaweedFS S3 port and
hands the answer back, unless a rule says otherwise. Rules are switched at run
time from the test (:meth:`FaultProxy.set_rules`, :meth:`FaultProxy.clear`):

* ``not_found``  every matching request gets 404 (NoSuchKey, or the code given)
* ``error``      500 InternalError (or another status)
* ``hang``       read the request, then answer nothing until the rule is cleared
                 or the proxy closes (bounded by ``max_hang``)
* ``reset``      read the request, then reset the connection (RST)
* ``cut``        forward, but send only the first ``arg`` bytes of the response body
                 (the full Content-Length is announced) and close
* ``ignore_if_none_match``  forward a conditional write WITHOUT its ``If-None-Match``
                 header, as a server that ignores it would; the request is signed
                 again (AWS SigV4) with the server's credentials, since the header is
                 part of the signature

Bounded: at most ``max_connections`` client connections (a new one waits up to 30 s for
a slot, then is closed),
each served by one daemon thread; the request log keeps the last 10 000 entries.
Loopback only: it binds 127.0.0.1 and forwards to a 127.0.0.1 port.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import http.client
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import BinaryIO

ACTIONS = ("not_found", "error", "hang", "reset", "cut", "ignore_if_none_match")
_MAX_LINE = 65536
_MAX_BODY = 256 << 20


@dataclass
class Rule:
    """One fault. ``method``/``path_contains`` narrow what it matches; ``after`` lets that
    many matching requests through first; ``times`` limits how often it fires (None:
    until cleared)."""

    action: str
    method: str | None = None
    path_contains: str | None = None
    times: int | None = None
    arg: int | str | None = None
    after: int = 0

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown fault {self.action!r}; one of {ACTIONS}")

    def matches(self, method: str, path: str) -> bool:
        return ((self.method is None or self.method == method)
                and (self.path_contains is None or self.path_contains in path)
                and (self.times is None or self.times > 0))


@dataclass(frozen=True)
class Logged:
    method: str
    path: str
    action: str  # "forward" or the fault applied
    status: int  # status sent to the client (0: none)


class _Request:
    def __init__(self, method: str, target: str, version: str,
                 headers: list[tuple[str, str]], body: bytes) -> None:
        self.method, self.target, self.version = method, target, version
        self.headers, self.body = headers, body

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


class FaultProxy:
    def __init__(self, upstream_port: int, *, access_key: str = "", secret_key: str = "",
                 max_connections: int = 256, max_hang: float = 120.0) -> None:
        self.upstream_port = upstream_port
        self.access_key, self.secret_key = access_key, secret_key
        self.max_hang = max_hang
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._closed = False
        self.log: collections.deque[Logged] = collections.deque(maxlen=10_000)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port: int = self._sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._clients: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept_loop, name="faultproxy",
                                        daemon=True)
        self._thread.start()

    @classmethod
    def for_server(cls, server: object, **kw: object) -> FaultProxy:
        """A proxy in front of a tests.support.s3server.S3Server (its plain HTTP port)."""
        return cls(server.ports["s3.port"], access_key=server.access_key,  # type: ignore[attr-defined]
                   secret_key=server.secret_key, **kw)  # type: ignore[attr-defined, arg-type]

    # -- control ---------------------------------------------------------------
    def set_rules(self, *rules: Rule) -> None:
        with self._changed:
            self._rules = list(rules)
            self._changed.notify_all()

    def add_rule(self, rule: Rule) -> None:
        with self._changed:
            self._rules.append(rule)
            self._changed.notify_all()

    def clear(self) -> None:
        self.set_rules()

    def count(self, action: str, method: str | None = None) -> int:
        return sum(1 for e in list(self.log)
                   if e.action == action and (method is None or e.method == method))

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._rules = []
            self._changed.notify_all()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone does not
        with contextlib.suppress(OSError):
            self._sock.close()
        with self._lock:
            clients = list(self._clients)
        for c in clients:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pick(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path):
                    if rule.after > 0:
                        rule.after -= 1
                        return None
                    if rule.times is not None:
                        rule.times -= 1
                    return rule
        return None

    # -- serving ---------------------------------------------------------------
    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            # Idle keep-alive connections (boto3 pools, prefetch workers waiting to exit)
            # hold slots: a new client waits for one rather than meeting a closed socket,
            # which pitr would rightly report as an outage the test did not inject.
            if not self._slots.acquire(timeout=30):
                self.log.append(Logged("-", "-", "too-many-connections", 0))
                conn.close()
                continue
            with self._lock:
                self._clients.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True,
                             name="faultproxy-conn").start()

    def _serve(self, conn: socket.socket) -> None:
        upstream: http.client.HTTPConnection | None = None
        try:
            rfile = conn.makefile("rb")
            while not self._closed:
                req = _read_request(rfile, conn)
                if req is None:
                    return
                rule = self._pick(req.method, req.path)
                action = rule.action if rule else "forward"
                if action == "hang":
                    self.log.append(Logged(req.method, req.path, action, 0))
                    self._hang(rule, conn)  # type: ignore[arg-type]
                    return  # the client gave up or the rule went away: drop the connection
                if action == "reset":
                    self.log.append(Logged(req.method, req.path, action, 0))
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if action in ("not_found", "error"):
                    status = 404 if action == "not_found" else int(
                        rule.arg if rule and isinstance(rule.arg, int) else 500)
                    code = (str(rule.arg) if action == "not_found" and rule and rule.arg
                            else "NoSuchKey" if action == "not_found" else "InternalError")
                    self.log.append(Logged(req.method, req.path, action, status))
                    _send_error(conn, req, status, code)
                    continue
                if action == "ignore_if_none_match" and req.header("if-none-match") is not None:
                    req = self._strip_if_none_match(req)
                else:
                    action = "forward" if action == "ignore_if_none_match" else action
                answer = None
                for fresh in ((False, True) if upstream is not None else (True,)):
                    if fresh:
                        if upstream is not None:
                            upstream.close()
                        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port,
                                                              timeout=60)
                    try:
                        answer = _forward(upstream, req)  # type: ignore[arg-type]
                        break
                    except (OSError, http.client.HTTPException):
                        # A kept-alive upstream connection the server closed while idle
                        # fails on reuse: once more on a new one, as any client would.
                        continue
                if answer is None:
                    if upstream is not None:
                        upstream.close()
                    upstream = None
                    self.log.append(Logged(req.method, req.path, "upstream-failed", 0))
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                status, headers, body = answer
                self.log.append(Logged(req.method, req.path, action, status))
                if action == "cut":
                    n = int(rule.arg or 0) if rule else 0
                    _send_response(conn, req, status, headers, body, limit=n)
                    return
                _send_response(conn, req, status, headers, body)
        except OSError as exc:  # the client went away (or a bug here): say so in the log
            self.log.append(Logged("-", "-", f"client-error {type(exc).__name__}", 0))
            return
        finally:
            if upstream is not None:
                upstream.close()
            with contextlib.suppress(OSError):
                conn.close()
            with self._lock:
                self._clients.discard(conn)
            self._slots.release()

    def _hang(self, rule: Rule, conn: socket.socket) -> None:
        deadline = time.monotonic() + self.max_hang
        while time.monotonic() < deadline:
            with self._changed:
                if self._closed or not any(r is rule for r in self._rules):
                    return
                self._changed.wait(0.5)
            if _peer_gone(conn):
                return

    def _strip_if_none_match(self, req: _Request) -> _Request:
        headers = [(k, v) for k, v in req.headers if k.lower() != "if-none-match"]
        stripped = _Request(req.method, req.target, req.version, headers, req.body)
        auth = req.header("authorization")
        if auth and self.secret_key:
            new_auth = sigv4_resign(stripped, auth, self.secret_key)
            stripped.headers = [(k, new_auth if k.lower() == "authorization" else v)
                                for k, v in stripped.headers]
        return stripped


def _peer_gone(conn: socket.socket) -> bool:
    try:
        conn.setblocking(False)
        try:
            return conn.recv(1, socket.MSG_PEEK) == b""
        finally:
            conn.setblocking(True)
    except BlockingIOError:
        return False
    except OSError:
        return True


# -- HTTP plumbing -----------------------------------------------------------------
def _read_request(rfile: BinaryIO, conn: socket.socket) -> _Request | None:
    line = rfile.readline(_MAX_LINE)
    if not line:
        return None
    try:
        method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    except ValueError:
        return None
    headers: list[tuple[str, str]] = []
    while True:
        h = rfile.readline(_MAX_LINE)
        if not h or h in (b"\r\n", b"\n"):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers.append((k.strip(), v.strip()))
    req = _Request(method, target, version, headers, b"")
    if (req.header("expect") or "").lower() == "100-continue":
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        req.headers = [(k, v) for k, v in headers if k.lower() != "expect"]
    if (req.header("transfer-encoding") or "").lower() == "chunked":
        chunks = []
        while True:
            size = int(rfile.readline(_MAX_LINE).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
                    pass
                break
            chunks.append(rfile.read(size))
            rfile.readline(_MAX_LINE)
        req.body = b"".join(chunks)
        req.headers = [(k, v) for k, v in req.headers if k.lower() != "transfer-encoding"]
        req.headers.append(("Content-Length", str(len(req.body))))
    else:
        length = int(req.header("content-length") or 0)
        if length > _MAX_BODY:
            return None
        req.body = rfile.read(length) if length else b""
    return req


def _forward(upstream: http.client.HTTPConnection,
             req: _Request) -> tuple[int, list[tuple[str, str]], bytes]:
    upstream.putrequest(req.method, req.target, skip_host=True, skip_accept_encoding=True)
    for k, v in req.headers:
        upstream.putheader(k, v)
    upstream.endheaders(req.body if req.body else None)
    resp = upstream.getresponse()
    body = resp.read()
    return resp.status, resp.getheaders(), body


def _send_response(conn: socket.socket, req: _Request, status: int,
                   headers: list[tuple[str, str]], body: bytes, *,
                   limit: int | None = None) -> None:
    out = [f"HTTP/1.1 {status} {http.client.responses.get(status, 'Unknown')}"]
    for k, v in headers:
        if k.lower() in ("transfer-encoding", "connection", "content-length", "keep-alive"):
            continue
        out.append(f"{k}: {v}")
    if req.method == "HEAD":
        length = next((v for k, v in headers if k.lower() == "content-length"), "0")
        out.append(f"Content-Length: {length}")
        body = b""
    else:
        out.append(f"Content-Length: {len(body)}")
    payload = ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")
    conn.sendall(payload + (body if limit is None else body[:limit]))


def _send_error(conn: socket.socket, req: _Request, status: int, code: str) -> None:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>injected by the test proxy</Message><Resource>{req.path}</Resource>"
            "</Error>").encode()
    _send_response(conn, req, status, [("Content-Type", "application/xml"),
                                       ("Content-Length", str(len(body)))], body)


# -- AWS Signature Version 4, just enough to sign a request again -----------------------
def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def sigv4_resign(req: _Request, auth: str, secret_key: str) -> str:
    """The Authorization header for ``req`` as its client would have signed it without the
    headers it no longer carries (same credential scope, date and payload hash)."""
    algo, _, rest = auth.partition(" ")
    parts = dict(p.strip().split("=", 1) for p in rest.split(","))
    credential = parts["Credential"]
    _, date, region, service, _term = credential.split("/")
    present = {k.lower() for k, _ in req.headers}
    signed = [h for h in parts["SignedHeaders"].split(";") if h in present]
    values = {k.lower(): " ".join(v.split()) for k, v in req.headers}
    path, _, query = req.target.partition("?")
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    canonical_query = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
        for k, v in sorted(pairs))
    canonical = "\n".join([
        req.method, path, canonical_query,
        "".join(f"{h}:{values[h]}\n" for h in signed), ";".join(signed),
        values.get("x-amz-content-sha256", hashlib.sha256(req.body).hexdigest())])
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join([algo, values["x-amz-date"], scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{secret_key}".encode(), date), region), service),
                "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return (f"{algo} Credential={credential}, SignedHeaders={';'.join(signed)}, "
            f"Signature={signature}")
