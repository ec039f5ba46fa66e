"""A fault-injecting HTTP/TCP proxy on loopback, switchable while a test runs.

``FaultProxy(upstream_port)`` forwards everything to the upstream server and
keeps a request log (method, target, declared body length, how many body
bytes actually went through). Faults, each armed by a method call:

* ``reset_after(nbytes, times=1)``: once ``nbytes`` more request bytes have
  gone upstream, the connection carrying them is reset (RST) mid-transfer;
* ``slowdown(n, status=503)``: the next ``n`` requests get a canned S3 XML
  error (503 SlowDown, 429, 500, or 403 InvalidAccessKeyId) and never reach
  the server;
* ``stall()``: requests are read and never answered (until ``clear()``);
* ``outage()``: the port refuses connections (until ``clear()``).

HTTP/1.1 without pipelining (what urllib3 speaks) is all it needs to parse.

``TruncatingProxy(upstream_port, drop, mode)`` is a lying or half-working store
instead: it keeps ``drop`` bytes less of each object and echoes on HEAD what the
client sent (or tells the truth), swallows PUTs and lists them, answers 500 to a
CompleteMultipartUpload that succeeded, or drops the connection after a PUT or
POST was done.
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

SLOWDOWN_BODIES = {
    503: ("Service Unavailable", "SlowDown", "Please reduce your request rate."),
    429: ("Too Many Requests", "TooManyRequests", "Please reduce your request rate."),
    500: ("Internal Server Error", "InternalError", "We encountered an internal error."),
    403: ("Forbidden", "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist."),
}


@dataclass
class Request:
    method: str
    target: str
    content_length: int
    body_sent: int = 0          # body bytes that reached the server
    answered_by_proxy: int | None = None   # status of a canned answer

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)

    @property
    def part_number(self) -> int | None:
        q = self.query
        return int(q["partNumber"][0]) if "partNumber" in q and "uploadId" in q else None


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        self.bytes_up = 0            # all bytes sent to the server (heads + bodies)
        self.resets = 0
        self._reset_at: int | None = None
        self._reset_times = 0
        self._slowdown = 0
        self._slowdown_status = 503
        self._stalled = False
        self._stall_release = threading.Event()
        self._closing = False
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.port = 0
        self._listen()

    # -- control -------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset_after(self, nbytes: int, times: int = 1) -> None:
        with self.lock:
            self._reset_at = self.bytes_up + nbytes
            self._reset_times = times

    def slowdown(self, n: int, status: int = 503) -> None:
        with self.lock:
            self._slowdown, self._slowdown_status = n, status

    def stall(self) -> None:
        with self.lock:
            self._stalled = True
            self._stall_release.clear()

    def outage(self) -> None:
        with self.lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            # close() alone leaves the socket listening while a thread is blocked in
            # accept() on it: the next connection still gets in, and the port cannot be
            # bound again. shutdown() wakes the accept and frees the port.
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()

    def clear(self) -> None:
        """Back to a plain proxy: no faults, listening again."""
        with self.lock:
            self._reset_at, self._reset_times, self._slowdown = None, 0, 0
            self._stalled = False
            self._stall_release.set()
            down = self._listener is None
        if down:
            self._listen()

    def clear_log(self) -> None:
        with self.lock:
            self.requests.clear()

    def close(self) -> None:
        self._closing = True
        self.clear()
        self.outage()
        self._stall_release.set()
        with self.lock:
            conns = list(self._conns)
        for c in conns:
            _close(c)

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------

    def _listen(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _ in range(50):  # re-binding the same port after an outage may lag a moment
            try:
                s.bind(("127.0.0.1", self.port))
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"fault proxy cannot re-bind port {self.port}")
        s.listen(64)
        self.port = s.getsockname()[1]
        with self.lock:
            self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self.lock:
                self._conns.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        rfile = None
        try:
            rfile = client.makefile("rb")
            while True:
                head = _read_head(rfile)
                if head is None:
                    return
                line = head.split(b"\r\n", 1)[0].decode("latin-1")
                method, target, _ = (line.split(" ", 2) + ["", ""])[:3]
                headers = _headers(head)
                length = int(headers.get("content-length", "0") or 0)
                req = Request(method, target, length)
                with self.lock:
                    self.requests.append(req)
                    stalled = self._stalled
                    canned = None
                    if self._slowdown > 0:
                        self._slowdown -= 1
                        canned = self._slowdown_status
                if stalled:
                    self._stall_release.wait()
                    return
                if canned is not None:
                    if "100-continue" not in headers.get("expect", "").lower():
                        _drain(rfile, length)
                    req.answered_by_proxy = canned
                    client.sendall(_canned(canned))
                    return
                if upstream is None:
                    upstream = socket.create_connection(self.upstream)
                    with self.lock:
                        self._conns.add(upstream)
                    threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
                if not self._send(upstream, client, head, req, count_body=False):
                    return
                left = length
                while left > 0:
                    chunk = rfile.read1(min(left, 65536)) if hasattr(rfile, "read1") else rfile.read(min(left, 65536))
                    if not chunk:
                        return
                    if not self._send(upstream, client, chunk, req, count_body=True):
                        return
                    left -= len(chunk)
        except OSError:
            return
        finally:
            if rfile is not None:
                rfile.close()   # releases the fd, so a pending RST (SO_LINGER 0) goes out
            _close(client)
            if upstream is not None:
                _close(upstream)
            with self.lock:
                self._conns.discard(client)
                if upstream is not None:
                    self._conns.discard(upstream)

    def _send(self, upstream: socket.socket, client: socket.socket, data: bytes, req: Request,
              count_body: bool) -> bool:
        """Forward ``data``; False when a reset fault fired on this connection."""
        with self.lock:
            cut = None
            if self._reset_at is not None and self._reset_times > 0 and self.bytes_up + len(data) > self._reset_at:
                cut = max(0, self._reset_at - self.bytes_up)
                self._reset_times -= 1
                self._reset_at = None if self._reset_times == 0 else self._reset_at
                self.resets += 1
            n = len(data) if cut is None else cut
            self.bytes_up += n
            if count_body:
                req.body_sent += n
        if n:
            upstream.sendall(data[:n])
        if cut is not None:
            _rst(client)
            _rst(upstream)
            return False
        return True


def _read_head(rfile) -> bytes | None:  # noqa: ANN001
    lines = []
    while True:
        line = rfile.readline(65537)
        if not line:
            return None
        if not lines and line in (b"\r\n", b"\n"):
            continue
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)


def _headers(head: bytes) -> dict[str, str]:
    out = {}
    for raw in head.split(b"\r\n")[1:]:
        k, sep, v = raw.decode("latin-1").partition(":")
        if sep:
            out[k.strip().lower()] = v.strip()
    return out


def _drain(rfile, n: int) -> None:  # noqa: ANN001
    while n > 0:
        chunk = rfile.read(min(n, 65536))
        if not chunk:
            return
        n -= len(chunk)


def _canned(status: int) -> bytes:
    reason, code, message = SLOWDOWN_BODIES.get(status, ("Error", "ServiceUnavailable", "Injected fault"))
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>faultproxy</RequestId><HostId>faultproxy</HostId></Error>"
    ).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        try:
            # the server hung up: so does the proxy, both ways, so the client
            # never sends another request down a connection with no server
            dst.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _rst(s: socket.socket) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    _close(s)


def _close(s: socket.socket) -> None:
    try:
        s.close()
    except OSError:
        pass


class TruncatingProxy:
    """A lying store on loopback: an HTTP proxy in front of an S3 server that
    keeps ``drop`` bytes less of each object PUT in one request and, asked with
    HEAD, answers with the size, ETag and SHA-256 checksum that were sent (and
    with that size and ETag in a listing).

    It drops the request's Content-MD5 and checksum headers so the server takes
    the short body, and remembers what the client sent to echo it. Everything
    else (GET, listings, multipart) passes through unchanged, so a read-back sees
    what the server really holds. ``lies`` counts the HEAD answers it rewrote.
    """

    HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
                     "trailer", "upgrade", "expect", "host"})
    CHECKED = frozenset({"content-md5", "x-amz-checksum-sha256", "x-amz-sdk-checksum-algorithm"})

    MODES = ("echo", "honest", "phantom", "complete-500", "drop-after-response")

    def __init__(self, upstream_port: int, drop: int = 1000, mode: str = "echo", times: int = 10**9) -> None:
        """``mode``: ``echo`` (the default above); ``honest``: keeps ``drop`` bytes less
        but HEAD and listings tell the truth; ``phantom``: a single PUT is answered 200
        with its ETag and never stored, and listings claim it (HEAD tells the truth);
        ``complete-500``: CompleteMultipartUpload succeeds upstream, the client is
        answered 500 InternalError; ``drop-after-response``: a PUT or POST is done
        upstream and the connection is closed before its answer. ``times``: how many
        requests the last three modes touch. ``lies`` counts what was falsified."""
        import http.client
        import http.server

        assert mode in self.MODES, mode
        proxy = self
        self.drop = drop
        self.mode = mode
        self.left = times
        self.sent: dict[str, dict[str, str]] = {}     # path -> what the client sent
        self.phantoms: dict[str, dict[str, str]] = {}  # path -> what a swallowed PUT sent
        self.lies = 0
        lock = threading.Lock()

        def take() -> bool:
            with lock:
                if proxy.left <= 0:
                    return False
                proxy.left -= 1
                proxy.lies += 1
                return True

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"        # keep-alive, and 100-continue answered here

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in proxy.HOP}
                path = urlsplit(self.path).path
                query = urlsplit(self.path).query
                single_put = self.command == "PUT" and body and not query
                if single_put and proxy.mode == "phantom" and take():
                    md5 = self.headers.get("Content-MD5")
                    etag = f'"{base64.b64decode(md5).hex() if md5 else hashlib.md5(body).hexdigest()}"'
                    proxy.phantoms[path] = {"Content-Length": str(len(body)), "ETag": etag}
                    self.send_response_only(200, "OK")
                    self.send_header("ETag", etag)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if single_put and proxy.mode in ("echo", "honest"):
                    md5 = self.headers.get("Content-MD5")
                    proxy.sent[path] = {
                        "Content-Length": str(len(body)),
                        "ETag": f'"{base64.b64decode(md5).hex()}"' if md5 else "",
                        "x-amz-checksum-sha256": self.headers.get("x-amz-checksum-sha256", ""),
                    }
                    body = body[:max(0, len(body) - proxy.drop)]
                    headers = {k: v for k, v in headers.items() if k.lower() not in proxy.CHECKED}
                    proxy.lies += proxy.mode == "honest"
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    out = [(k, v) for k, v in resp.getheaders() if k.lower() not in proxy.HOP]
                    if self.command == "GET" and resp.status == 200 and "list-type=2" in self.path:
                        data = (proxy._phantoms_in_listing(path, data) if proxy.mode == "phantom"
                                else proxy._lie_in_listing(path, data) if proxy.mode == "echo" else data)
                        out = [(k, v) for k, v in out if k.lower() != "content-length"]
                    completed = (self.command == "POST" and "uploadId=" in query and resp.status == 200
                                 and b"<Error>" not in data)
                    if completed and proxy.mode == "complete-500" and take():
                        resp.status, resp.reason, data = 500, "Internal Server Error", _canned(500).split(b"\r\n\r\n", 1)[1]
                        out = [("Content-Type", "application/xml")]
                    if (proxy.mode == "drop-after-response" and self.command in ("PUT", "POST")
                            and resp.status < 300 and take()):
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)     # done upstream, never answered
                        return
                    if self.command == "HEAD" and resp.status == 200 and path in proxy.sent and proxy.mode == "echo":
                        lie = {k.lower(): v for k, v in proxy.sent[path].items() if v}
                        out = [(k, v) for k, v in out if k.lower() not in lie] + list(lie.items())
                        proxy.lies += 1
                finally:
                    conn.close()
                self.send_response_only(resp.status, resp.reason)
                for k, v in out:
                    self.send_header(k, v)
                if self.command != "HEAD" and not any(k.lower() == "content-length" for k, _ in out):
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _lie_in_listing(self, bucket_path: str, xml: bytes) -> bytes:
        """A ListObjectsV2 answer with each object's Size and ETag as they were sent."""
        def lie(m: re.Match[bytes]) -> bytes:
            block = m.group(0)
            key = re.search(rb"<Key>(.*?)</Key>", block)
            sent = self.sent.get(f"{bucket_path.rstrip('/')}/{key.group(1).decode()}") if key else None
            if sent is None:
                return block
            self.lies += 1
            block = re.sub(rb"<Size>\d+</Size>", f"<Size>{sent['Content-Length']}</Size>".encode(), block)
            return re.sub(rb"<ETag>.*?</ETag>", f"<ETag>{sent['ETag']}</ETag>".encode(), block)

        return re.sub(rb"<Contents>.*?</Contents>", lie, xml, flags=re.S)

    def _phantoms_in_listing(self, bucket_path: str, xml: bytes) -> bytes:
        """A ListObjectsV2 answer that also names the swallowed PUTs under its prefix."""
        m = re.search(rb"<Prefix>(.*?)</Prefix>", xml)
        prefix = m.group(1).decode() if m else ""
        extra = b""
        for path, sent in sorted(self.phantoms.items()):
            key = path[len(bucket_path.rstrip("/")) + 1:]
            if not key.startswith(prefix) or f"<Key>{key}</Key>".encode() in xml:
                continue
            self.lies += 1
            extra += (f"<Contents><Key>{key}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>"
                      f"<ETag>{sent['ETag']}</ETag><Size>{sent['Content-Length']}</Size>"
                      "<StorageClass>STANDARD</StorageClass></Contents>").encode()
        if not extra:
            return xml
        xml = re.sub(rb"<KeyCount>(\d+)</KeyCount>",
                     lambda k: b"<KeyCount>%d</KeyCount>" % (int(k.group(1)) + extra.count(b"<Contents>")), xml)
        return xml.replace(b"</ListBucketResult>", extra + b"</ListBucketResult>")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "TruncatingProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
