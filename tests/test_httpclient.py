"""The standard-library HTTP client under Coze's calls, against real servers on loopback:
keep-alive reuse, a connection the server dropped while idle, TLS with a CA of the test's own,
proxies (CONNECT for HTTPS, absolute URLs for HTTP, credentials, no_proxy), timeouts; and
that the daemon's Coze path never loads requests/urllib3."""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import List, Optional

import pytest

from conftest import TOKEN, VOICE

from coze_speaker.coze import CozeClient, CozeError
from coze_speaker.coze.httpclient import HttpSession, TransportError, TransportTimeout

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch):
    """The tests set the proxy variables they need; none leak in from the machine."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY", "NO_PROXY", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)


class Server:
    """A threaded HTTP/1.1 server that answers JSON and records each request with the client
    port it came on (one port = one TCP connection)."""

    def __init__(self, tls: Optional[ssl.SSLContext] = None, drop_after_answer: bool = False,
                 silent: bool = False) -> None:
        self.seen: List[dict] = []
        self.drop_after_answer = drop_after_answer
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                server.seen.append({"port": self.client_address[1], "method": self.command, "path": self.path,
                                    "headers": dict(self.headers), "body": body})
                if silent:
                    threading.Event().wait(5)
                    return
                out = json.dumps({"code": 0, "msg": "", "data": {"n": len(server.seen)}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)
                self.wfile.flush()
                if server.drop_after_answer:  # as a server whose keep-alive timeout ran out does
                    self.close_connection = True

            do_GET = do_POST = _answer

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.scheme = "https" if tls else "http"
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def connections(self) -> int:
        return len({r["port"] for r in self.seen})

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Proxy:
    """A forwarding proxy: CONNECT tunnels, and plain requests passed on to the host their
    absolute URL names. Records each first request line and its headers."""

    def __init__(self) -> None:
        self.seen: List[tuple] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            head, rest = head.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines[1:])
            self.seen.append((lines[0], headers))
            method, target, _ = lines[0].split(" ")
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                upstream = socket.create_connection((host, int(port)))
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                hostport = target.split("/")[2]
                host, port = hostport.rsplit(":", 1)
                upstream = socket.create_connection((host, int(port)))
                upstream.sendall(head + b"\r\n\r\n" + rest)
            with upstream:
                t = threading.Thread(target=_pipe, args=(upstream, conn), daemon=True)
                t.start()
                _pipe(conn, upstream)
                t.join(5)

    def close(self) -> None:
        self.sock.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A CA of the test's own and a certificate it signed for 127.0.0.1."""
    if not shutil.which("openssl"):
        pytest.skip("openssl (the command) is needed to make test certificates")
    d = tmp_path_factory.mktemp("certs")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    # the extensions Python 3.13's default context insists on (VERIFY_X509_STRICT), as real CAs have them
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=coze-speaker test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-addext", "subjectKeyIdentifier=hash")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
                               "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
                               "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "srv.pem",
        "-days", "2", "-extfile", "ext.cnf")
    return d


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def tls_server(certs):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs / "srv.pem", certs / "srv.key")
    s = Server(tls=ctx)
    yield s
    s.close()


@pytest.fixture
def proxy():
    p = Proxy()
    yield p
    p.close()


def test_keep_alive_reuses_one_connection(server):
    session = HttpSession("test")
    for _ in range(3):
        assert session.request("GET", server.url + "/v1/audio/voices").content
    assert len(server.seen) == 3
    assert server.connections() == 1
    session.close()


def test_a_body_left_unread_is_not_reused(server):
    session = HttpSession("test")
    response = session.request("GET", server.url + "/a", stream=True)
    response.close()  # nothing read: the connection cannot carry another answer
    session.request("GET", server.url + "/b")
    assert server.connections() == 2


def test_a_connection_the_server_dropped_while_idle_is_replaced_and_nothing_is_sent_twice(server):
    server.drop_after_answer = True
    session = HttpSession("test")
    session.request("GET", server.url + "/first")
    threading.Event().wait(0.2)  # the FIN arrives while the connection is idle in the pool
    response = session.request("GET", server.url + "/second")
    assert json.loads(response.content)["data"]["n"] == 2
    assert [r["path"] for r in server.seen] == ["/first", "/second"]
    assert server.connections() == 2


def test_a_silent_server_times_out_on_read():
    s = Server(silent=True)
    try:
        with pytest.raises(TransportTimeout) as info:
            HttpSession("test").request("GET", s.url + "/", timeout=(5.0, 0.3))
        assert info.value.phase == "read"
    finally:
        s.close()


def test_refused_connection_is_a_transport_error():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nobody listens there now
    with pytest.raises(TransportError) as info:
        HttpSession("test").request("GET", f"http://127.0.0.1:{port}/")
    assert "refused" in info.value.reason.lower()


def test_https_with_a_ca_bundle_from_the_environment(tls_server, certs, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certs / "ca.pem"))
    client = CozeClient(TOKEN, tls_server.url, retries=0)
    assert list(client.list_voices()) == []
    assert tls_server.seen[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"


def test_https_with_ssl_cert_file(tls_server, certs, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(certs / "ca.pem"))
    assert HttpSession("test").request("GET", tls_server.url + "/").status_code == 200


def test_an_untrusted_certificate_fails_clearly_and_sends_nothing(tls_server):
    client = CozeClient(TOKEN, tls_server.url, retries=0)
    with pytest.raises(CozeError) as info:
        list(client.list_voices())
    text = str(info.value)
    assert "TLS certificate not trusted" in text and f"127.0.0.1:{tls_server.port}" in text
    assert TOKEN not in text
    assert tls_server.seen == []


def test_https_through_a_connect_proxy_with_credentials(tls_server, certs, proxy, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certs / "ca.pem"))
    monkeypatch.setenv("https_proxy", f"http://alice:pa%40ss@127.0.0.1:{proxy.port}")
    session = HttpSession("test")
    for _ in range(2):
        assert session.request("GET", tls_server.url + "/v1/audio/voices").status_code == 200
    # one tunnel (HTTP/1.0 up to Python 3.12, HTTP/1.1 from 3.13)
    assert [line.split()[:2] for line, _ in proxy.seen] == [["CONNECT", f"127.0.0.1:{tls_server.port}"]]
    auth = proxy.seen[0][1]["Proxy-Authorization"]
    assert base64.b64decode(auth.split()[1]) == b"alice:pa@ss"
    assert tls_server.connections() == 1  # the tunnel is kept alive too
    assert "Proxy-Authorization" not in tls_server.seen[0]["headers"]


def test_plain_http_through_a_proxy_uses_absolute_urls(server, proxy, monkeypatch):
    monkeypatch.setenv("http_proxy", f"http://bob:secret@127.0.0.1:{proxy.port}")
    response = HttpSession("test").request("GET", server.url + "/v1/audio/voices", params={"page_num": 1})
    assert response.status_code == 200
    line, headers = proxy.seen[0]
    assert line == f"GET {server.url}/v1/audio/voices?page_num=1 HTTP/1.1"
    assert base64.b64decode(headers["Proxy-Authorization"].split()[1]) == b"bob:secret"


def test_no_proxy_goes_direct(server, proxy, monkeypatch):
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert HttpSession("test").request("GET", server.url + "/").status_code == 200
    assert proxy.seen == []


@pytest.mark.parametrize("value", ["http://user:hunter2@proxy:port", "http://:8080"])
def test_a_malformed_proxy_variable_is_one_clear_error_without_its_password(server, monkeypatch, value):
    monkeypatch.setenv("http_proxy", value)
    with pytest.raises(TransportError, match="http_proxy environment variable is not a proxy URL") as info:
        HttpSession("test").request("GET", server.url + "/")
    assert "hunter2" not in str(info.value)
    assert server.seen == []


def test_a_proxy_setup_error_is_not_retried(server, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://proxy:port")
    client = CozeClient(TOKEN, server.url, retries=3, backoff=0.001)
    with pytest.raises(CozeError, match="http_proxy environment variable") as info:
        list(client.list_voices())
    assert info.value.retryable is False


def test_an_https_proxy_url_is_refused_clearly(server, monkeypatch):
    monkeypatch.setenv("http_proxy", "https://127.0.0.1:1")
    with pytest.raises(TransportError, match="only http:// proxies"):
        HttpSession("test").request("GET", server.url + "/")


def test_multipart_fields_and_file(server):
    session = HttpSession("test")
    session.request("POST", server.url + "/clone", data={"voice_name": 'say "hi"\u00e9'},
                    files={"file": ("me.wav", b"RIFF....", "audio/wav")})
    import email.parser
    rec = server.seen[0]
    msg = email.parser.BytesParser().parsebytes(
        f"Content-Type: {rec['headers']['Content-Type']}\r\n\r\n".encode() + rec["body"])
    parts = {p.get_param("name", header="content-disposition"): p for p in msg.get_payload()}
    assert parts["voice_name"].get_payload(decode=True).decode() == 'say "hi"\u00e9'
    assert parts["file"].get_filename() == "me.wav"
    assert parts["file"].get_payload(decode=True) == b"RIFF...."


def test_synthesis_never_loads_requests_or_urllib3(fake_coze):
    """The memory the daemon saves: a miss goes over the standard library only."""
    code = ("import sys; from coze_speaker.coze import CozeClient\n"
            f"c = CozeClient({TOKEN!r}, {fake_coze.url!r})\n"
            f"assert len(b''.join(c.synthesize('Dinner is ready', {VOICE!r}))) > 0\n"
            "list(c.list_voices())\n"
            "bad = sorted(m for m in ('requests', 'urllib3', 'charset_normalizer', 'certifi') if m in sys.modules)\n"
            "print(bad)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_doctor_names_the_fix_for_an_untrusted_certificate(tls_server):
    from coze_speaker.cli.doctor import check_token
    from coze_speaker.config import config_from_dict

    config = config_from_dict({"coze": {"base_url": tls_server.url, "token": TOKEN}})
    ok, found, fix = check_token(config)
    assert not ok and "TLS certificate not trusted" in found
    assert "ca-certificates" in fix and "SSL_CERT_FILE" in fix
    assert TOKEN not in found + fix


def test_doctor_names_the_fix_for_a_bad_proxy_variable(server, monkeypatch):
    from coze_speaker.cli.doctor import check_token
    from coze_speaker.config import config_from_dict

    monkeypatch.setenv("http_proxy", "http://bob:hunter2@proxy:port")
    ok, found, fix = check_token(config_from_dict({"coze": {"base_url": server.url, "token": TOKEN}}))
    assert not ok and "http_proxy environment variable" in found and "hunter2" not in found + fix
    assert fix.startswith("set https_proxy to http://host:port")
