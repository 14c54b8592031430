"""A small HTTP/1.1 client on the standard library, just what Coze's REST calls need.

Why not requests: paho-mqtt already loads http.client, ssl and urllib.request, so this costs
the daemon nothing, where requests, urllib3, charset_normalizer and certifi's bundle added
≈ 5.5 MB to a Pi's resident memory and ≈ 55 ms to the first cache miss (docs/benchmarks.md).

What it does: keep-alive connections kept per host and reused when an answer was read to its
end (one that went stale while idle is noticed and dropped before it is used); a connect
timeout and a read timeout; streamed bodies (Content-Length or chunked); JSON and
multipart/form-data bodies; HTTPS verified against the system's CA store (``SSL_CERT_FILE``
and ``REQUESTS_CA_BUNDLE`` are honoured); the ``https_proxy`` / ``http_proxy`` /
``no_proxy`` environment, with user:password in the proxy URL. It never retries by itself:
the caller counts and retries Coze requests.
"""

from __future__ import annotations

import base64
import http.client
import json as jsonlib
import os
import secrets
import select
import socket
import ssl
import threading
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple
from urllib.parse import unquote, urlencode, urlsplit
from urllib.request import getproxies_environment, proxy_bypass

__all__ = ["HttpSession", "Response", "TransportError", "TransportTimeout"]

#: Idle keep-alive connections kept per host (the daemon rarely has more than two requests at once).
MAX_IDLE_PER_HOST = 4


class TransportError(Exception):
    """The exchange failed below HTTP (no connection, TLS, a reset, a body cut short); `reason`
    is short enough for a log line."""

    def __init__(self, reason: str, *, retryable: bool = True) -> None:
        self.reason = reason
        #: False for a setup error (a bad URL or proxy variable): trying again cannot help
        self.retryable = retryable
        super().__init__(reason)


class TransportTimeout(TransportError):
    """No connection within the connect timeout (`phase` "connect"), or no data within the read
    timeout ("read")."""

    def __init__(self, phase: str) -> None:
        self.phase = phase
        super().__init__(f"{phase} timed out")


Target = Tuple[str, str, int]  # scheme, host, port
Proxy = Tuple[str, str, int, Optional[str]]  # scheme, host, port, Proxy-Authorization value


class Response:
    """An answer whose body is read on demand; close() hands a fully read connection back
    for reuse and closes any other."""

    def __init__(self, session: "HttpSession", target: Target, conn: http.client.HTTPConnection,
                 raw: http.client.HTTPResponse) -> None:
        self._session = session
        self._target = target
        self._conn: Optional[http.client.HTTPConnection] = conn
        self._raw = raw
        self.status_code = raw.status
        self.reason = raw.reason
        #: the headers (a case-insensitive email.message.Message)
        self.headers = raw.headers
        self._content: Optional[bytes] = None

    def iter_content(self, chunk_size: int = 8192) -> Iterator[bytes]:
        """The body as it arrives: each chunk is what one read brought (at most chunk_size)."""
        while True:
            try:
                chunk = self._raw.read1(chunk_size)
            except (socket.timeout, TimeoutError):
                raise TransportTimeout("read") from None
            except (http.client.HTTPException, OSError, ValueError, AttributeError) as exc:
                # ValueError/AttributeError: the file was closed under the read (shutdown())
                raise TransportError(_reason(exc)) from None
            if not chunk:
                try:
                    self._raw.read()  # b"" at the end; marks the answer complete (read1 does not)
                except (http.client.HTTPException, OSError, ValueError, AttributeError):
                    pass
                return
            yield chunk

    @property
    def content(self) -> bytes:
        """The whole body (read once)."""
        if self._content is None:
            self._content = b"".join(self.iter_content(65536))
        return self._content

    def shutdown(self) -> None:
        """End a read blocked on this answer from another thread: the read sees EOF."""
        conn = self._conn
        sock = getattr(conn, "sock", None)
        if isinstance(sock, socket.socket):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._raw.isclosed() and not self._raw.will_close and conn.sock is not None:
            self._session._give_back(self._target, conn)  # read to its end: reusable
        else:
            self._raw.close()
            conn.close()


class HttpSession:
    """Connections to one or more hosts, shared by threads (each request takes its own)."""

    def __init__(self, user_agent: str) -> None:
        self.user_agent = user_agent
        self._idle: Dict[Target, List[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._tls: Optional[ssl.SSLContext] = None

    def request(self, method: str, url: str, *, headers: Optional[Mapping[str, str]] = None,
                params: Optional[Mapping[str, Any]] = None, json: Any = None,
                data: Optional[Mapping[str, str]] = None, files: Optional[Mapping[str, Tuple[str, Any, str]]] = None,
                timeout: Tuple[float, float] = (5.0, 15.0), stream: bool = False) -> Response:
        """Send one request and return once the status line and headers are in.

        `files` maps a field to (filename, file object or bytes, content type); `data` goes as
        the other form fields of that multipart body. Unless `stream`, the body is read before
        returning.
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise TransportError(f"not an http(s) URL: {url!r}", retryable=False)
        target = (scheme, parts.hostname, parts.port or (443 if scheme == "https" else 80))
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if params:
            path += ("&" if "?" in path else "?") + urlencode(params)
        body, content_type = _encode_body(json, data, files)
        all_headers = {"User-Agent": self.user_agent, "Accept": "*/*", "Connection": "keep-alive"}
        if content_type:
            all_headers["Content-Type"] = content_type
        all_headers.update(headers or {})
        conn, proxy = self._connection(target, timeout[0])
        if proxy is not None and scheme == "http":  # plain HTTP through a proxy: an absolute URL
            path = f"http://{parts.netloc.rpartition('@')[2]}{path}"
            if proxy[3]:
                all_headers["Proxy-Authorization"] = proxy[3]
        phase = "connect"
        try:
            if conn.sock is None:
                conn.connect()
            phase = "read"
            conn.sock.settimeout(timeout[1])
            conn.request(method, path, body=body, headers=all_headers)
            raw = conn.getresponse()
        except (socket.timeout, TimeoutError):
            conn.close()
            raise TransportTimeout(phase) from None
        except (http.client.HTTPException, OSError) as exc:
            conn.close()
            raise TransportError(_reason(exc)) from None
        response = Response(self, target, conn, raw)
        if not stream:
            try:
                response.content
            finally:
                response.close()
        return response

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    # -- connections ------------------------------------------------------------------------

    def _connection(self, target: Target, connect_timeout: float) -> Tuple[http.client.HTTPConnection, Optional[Proxy]]:
        """An idle connection that is still open, else a new (not yet connected) one; and the
        proxy it goes through."""
        proxy = _proxy_for(target)
        while True:
            with self._lock:
                idle = self._idle.get(target)
                conn = idle.pop() if idle else None
            if conn is None:
                break
            if conn.sock is not None and not _dropped(conn.sock):
                return conn, proxy
            conn.close()  # the server closed it while it was idle
        scheme, host, port = target
        if proxy is None:
            if scheme == "https":
                return http.client.HTTPSConnection(host, port, timeout=connect_timeout, context=self._context()), None
            return http.client.HTTPConnection(host, port, timeout=connect_timeout), None
        p_scheme, p_host, p_port, auth = proxy
        if p_scheme != "http":
            raise TransportError(f"only http:// proxies are supported, not {p_scheme}:// ({scheme}_proxy)",
                                 retryable=False)
        if scheme == "http":
            return http.client.HTTPConnection(p_host, p_port, timeout=connect_timeout), proxy
        # HTTPS through the proxy: CONNECT, then TLS with the target inside the tunnel
        conn = http.client.HTTPSConnection(p_host, p_port, timeout=connect_timeout, context=self._context())
        conn.set_tunnel(host, port, headers={"Proxy-Authorization": auth} if auth else None)
        return conn, proxy

    def _give_back(self, target: Target, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(target, [])
            if len(idle) < MAX_IDLE_PER_HOST:
                idle.append(conn)
                return
        conn.close()

    def _context(self) -> ssl.SSLContext:
        """The TLS context: the system's CA store (SSL_CERT_FILE / SSL_CERT_DIR apply), or
        REQUESTS_CA_BUNDLE when set; certifi's bundle only when the system has none."""
        if self._tls is None:
            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None
            context = ssl.create_default_context(cafile=bundle)
            if bundle is None and not context.cert_store_stats().get("x509_ca") and not _has_capath():
                try:
                    import certifi  # type: ignore[import-not-found]

                    context.load_verify_locations(certifi.where())
                except (ImportError, OSError):
                    pass
            self._tls = context
        return self._tls


def _dropped(sock: socket.socket) -> bool:
    """An idle keep-alive socket that is readable has been closed by the server (or is broken)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _has_capath() -> bool:
    paths = ssl.get_default_verify_paths()
    return bool(paths.capath and os.path.isdir(paths.capath) and os.listdir(paths.capath))


def _proxy_for(target: Target) -> Optional[Proxy]:
    """(scheme, host, port, Proxy-Authorization value) of the proxy the environment names for
    this target, None for a direct connection."""
    scheme, host, _ = target
    proxies = getproxies_environment()
    url = proxies.get(scheme) or proxies.get("all")
    if not url or proxy_bypass(host):
        return None
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.hostname or port == -1:  # never echo the URL: it may hold a password
        raise TransportError(f"the {scheme}_proxy environment variable is not a proxy URL (http://host:port)",
                             retryable=False)
    auth = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        auth = "Basic " + base64.b64encode(pair).decode("ascii")
    p_scheme = parts.scheme.lower()
    return p_scheme, parts.hostname, port or (443 if p_scheme == "https" else 80), auth


def _encode_body(json: Any, data: Optional[Mapping[str, str]],
                 files: Optional[Mapping[str, Tuple[str, Any, str]]]) -> Tuple[Optional[bytes], Optional[str]]:
    if json is not None:
        return jsonlib.dumps(json, ensure_ascii=False).encode("utf-8"), "application/json"
    if files or data:  # form fields go as multipart/form-data, the one form Coze takes (clone)
        boundary = secrets.token_hex(16)
        out = bytearray()
        for name, value in (data or {}).items():
            out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{_quote(name)}\"\r\n\r\n"
                    ).encode("utf-8") + str(value).encode("utf-8") + b"\r\n"
        for name, (filename, content, ctype) in (files or {}).items():
            payload = content if isinstance(content, (bytes, bytearray)) else content.read()
            out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{_quote(name)}\"; "
                    f"filename=\"{_quote(filename)}\"\r\nContent-Type: {ctype}\r\n\r\n").encode("utf-8")
            out += payload + b"\r\n"
        out += f"--{boundary}--\r\n".encode("ascii")
        return bytes(out), f"multipart/form-data; boundary={boundary}"
    return None, None


def _quote(value: str) -> str:
    """A form-data name or filename inside double quotes (as browsers escape them)."""
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def _reason(exc: BaseException) -> str:
    """A short reason for a transport failure (no nested reprs, never a header or the token)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or type(exc).__name__}"
    if isinstance(exc, socket.gaierror):
        return f"name not resolved: {exc.strerror}"
    if isinstance(exc, http.client.IncompleteRead):
        return "IncompleteRead"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "Connection closed without an answer"
    if isinstance(exc, ConnectionResetError):
        return "Connection reset"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, OSError) and "Tunnel connection failed" in str(exc):
        return str(exc)[:120]
    return type(exc).__name__
