"""Operating callbox as a real process: settings, TLS, health, metrics, static files, connection
limits, timeouts, proxies, logs and shutdown. Each test starts ``python -m callbox`` on loopback."""

from __future__ import annotations

import json
import pathlib
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from _paths import INTEROP, ROOT
from _proc import Server, callbox, get, run_fail, server_let_go, wait_until

pytestmark = pytest.mark.process


def handshake(server: Server) -> dict[str, object]:
    status, body = get(f"{server.base}/socket.io/?EIO=4&transport=polling")
    assert status == 200 and body.startswith("0")
    return json.loads(body[1:])  # type: ignore[no-any-return]


def metrics(server: Server) -> dict[str, float]:
    status, body = get(f"{server.base}/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


# -- settings ---------------------------------------------------------------------------------


def test_precedence_flag_over_env_over_file_over_default(tmp_path: pathlib.Path) -> None:
    conf = tmp_path / "callbox.toml"
    conf.write_text("ping_interval = 7\nping_timeout = 3.5\n")
    env = {"CALLBOX_PING_INTERVAL": "8"}
    with callbox("--config", str(conf), "--ping-interval", "9", env=env) as s:
        assert handshake(s)["pingInterval"] == 9000
    with callbox("--config", str(conf), env=env) as s:
        assert handshake(s)["pingInterval"] == 8000
        assert handshake(s)["pingTimeout"] == 3500
    with callbox(env={"CALLBOX_CONFIG": str(conf)}) as s:
        assert handshake(s)["pingInterval"] == 7000
    with callbox() as s:
        assert handshake(s) | {"sid": ""} == {
            "sid": "", "upgrades": ["websocket"], "pingInterval": 25000, "pingTimeout": 20000, "maxPayload": 1000000,
        }


@pytest.mark.parametrize(
    ("args", "env", "toml", "named"),
    [
        (["--ping-interval", "abc"], {}, None, "ping_interval"),
        (["--port", "70000"], {}, None, "port"),
        ([], {"CALLBOX_MAX_PAYLOAD": "-5"}, None, "max_payload"),
        ([], {}, "bogus = 1\n", "bogus"),
        ([], {}, 'port = "x"\n', "port"),
        ([], {}, "port = [\n", "config"),
        (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.pem"], {}, None, "tls_cert"),
        (["--log-format", "xml"], {}, None, "log_format"),
        (["--trusted-proxies", "not-an-ip"], {}, None, "trusted_proxies"),
        (["--static", "/nonexistent-folder"], {}, None, "static"),
    ],
)
def test_bad_value_stops_startup_with_one_line(
    tmp_path: pathlib.Path, args: list[str], env: dict[str, str], toml: str | None, named: str
) -> None:
    if toml is not None:
        (tmp_path / "c.toml").write_text(toml)
        args = [*args, "--config", str(tmp_path / "c.toml")]
    result = run_fail(*args, env=env)
    assert result.returncode == 2
    assert "listening" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.stderr


def test_unreadable_config_file_names_it() -> None:
    result = run_fail("--config", "/nonexistent/callbox.toml")
    assert result.returncode == 2 and "/nonexistent/callbox.toml" in result.stderr


def test_help_lists_every_setting_with_default_and_version() -> None:
    from callbox.config import SETTINGS, Config

    out = " ".join(run_fail("--help", env={"COLUMNS": "1000"}).stdout.split())  # one line per flag
    for setting in SETTINGS:
        shown = f"(default: {setting.default_text(getattr(Config(), setting.name))}; env {setting.env})"
        assert setting.flag in out and shown in out, shown
    assert "(default: 25.0 s; env CALLBOX_PING_INTERVAL)" in out
    version = run_fail("--version")
    assert version.returncode == 0 and version.stdout.startswith("callbox ")


# -- health, metrics, static ------------------------------------------------------------------


def test_health_ready_and_metrics() -> None:
    with callbox() as s:
        assert get(f"{s.base}/healthz") == (200, "ok\n")
        assert get(f"{s.base}/readyz") == (200, "ready\n")
        handshake(s)
        m = metrics(s)
        assert m["callbox_connections{transport=polling}"] == 1
        assert m["callbox_connections{transport=websocket}"] == 0
        assert m["process_resident_memory_bytes"] > 1_000_000
        assert m["process_open_fds"] > 0
        assert "process_cpu_seconds_total" in m


def test_static_files_cannot_leave_their_folder(tmp_path: pathlib.Path) -> None:
    site = tmp_path / "site"
    (site / "js").mkdir(parents=True)
    (site / "index.html").write_text("<h1>callbox</h1>")
    (site / "js" / "app.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("top secret")
    (site / "link").symlink_to(tmp_path / "secret.txt")
    with callbox("--static", str(site)) as s:
        assert get(f"{s.base}/") == (200, "<h1>callbox</h1>")
        assert get(f"{s.base}/js/app.js") == (200, "console.log(1)")
        for path in ["/../secret.txt", "/%2e%2e/secret.txt", "/js/..%2f..%2fsecret.txt", "/link",
                     "/..%5csecret.txt", "/js/%00", "/nothing-here"]:
            with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
                c.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                reply = b""
                while chunk := c.recv(4096):
                    reply += chunk
            assert reply.startswith(b"HTTP/1.1 404"), (path, reply[:80])
            assert b"top secret" not in reply
        # The Socket.IO endpoint still works beside the static folder.
        handshake(s)


# -- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    d = tmp_path_factory.mktemp("tls")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cert.private_key_and_cert_chain_pem.write_to_path(str(d / "server.pem"))
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    return str(d / "ca.pem"), str(d / "server.pem"), str(d / "key.pem")


@pytest.mark.node
def test_tls_serves_https_and_socketio_client_over_wss(tls_files: tuple[str, str, str]) -> None:
    ca, cert, key = tls_files
    with callbox("--tls-cert", cert, "--tls-key", key, tls=True) as s:
        ctx = ssl.create_default_context(cafile=ca)
        assert get(f"{s.base}/healthz", context=ctx) == (200, "ok\n")
        with pytest.raises(urllib.error.URLError):
            get(f"{s.base}/healthz", context=ssl.create_default_context())  # not trusted without the CA
        for transports in ("websocket", "polling", "default"):
            out = subprocess.run(
                ["node", "tls_client.mjs", s.base, ca, transports],
                cwd=INTEROP, capture_output=True, text=True, timeout=30,
            )
            assert out.returncode == 0, out.stderr
            seen = json.loads(out.stdout.strip().splitlines()[-1])
            assert seen["connected"] is True
            assert seen["ack"] is not None  # the server answered an event over TLS
            assert seen["transport"] == ("polling" if transports == "polling" else "websocket")


# -- connection limits, timeouts, proxies -----------------------------------------------------


def _request(c: socket.socket, path: str = "/healthz", headers: str = "") -> bytes:
    c.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
    reply = b""
    while b"\r\n\r\n" not in reply or not reply.endswith((b"ok\n", b"connections\n")):
        chunk = c.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply


def test_per_address_and_total_connection_caps() -> None:
    with callbox("--max-connections-per-address", "2") as s:
        a = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        b = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        assert _request(a).startswith(b"HTTP/1.1 200")
        assert _request(b).startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
            assert _request(c).startswith(b"HTTP/1.1 503")
        assert metrics_after_close(s, a, b)["callbox_http_refused_total{reason=max_connections_per_address}"] == 1
    with callbox("--max-connections", "1") as s:
        a = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        assert _request(a).startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
            assert _request(c).startswith(b"HTTP/1.1 503")
        assert metrics_after_close(s, a)["callbox_http_refused_total{reason=max_connections}"] == 1


def metrics_after_close(s: Server, *conns: socket.socket) -> dict[str, float]:
    """Close ``conns``, then scrape /metrics once the server has let them go: a scrape before that
    would be refused like any connection past the cap, and counted."""
    ends = [(c.getpeername(), c.getsockname()) for c in conns]
    for c in conns:
        c.close()
    wait_until(lambda: all(server_let_go(*end) for end in ends), 5, "the server to close its ends")
    return metrics(s)


def test_slow_request_head_is_cut_off_and_idle_keepalive_closed() -> None:
    with callbox("--request-head-timeout", "0.5", "--keepalive-timeout", "0.5") as s:
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finishes the head
            start = time.monotonic()
            assert c.recv(4096) == b""
            assert 0.4 < time.monotonic() - start < 3
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
            assert _request(c).startswith(b"HTTP/1.1 200")
            start = time.monotonic()
            assert c.recv(4096) == b""  # idle after a complete request: closed
            assert 0.4 < time.monotonic() - start < 3
        assert metrics(s)["callbox_http_refused_total{reason=head_timeout}"] == 1


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    with callbox("--max-connections-per-address", "1", "--trusted-proxies", "127.0.0.0/8") as s:
        a = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        b = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        assert _request(a, headers="X-Forwarded-For: 198.51.100.1\r\n").startswith(b"HTTP/1.1 200")
        assert _request(b, headers="X-Forwarded-For: 203.0.113.9, 127.0.0.5\r\n").startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
            assert _request(c, headers="X-Forwarded-For: 198.51.100.1\r\n").startswith(b"HTTP/1.1 503")
        a.close()
        b.close()
    with callbox("--max-connections-per-address", "1") as s:  # no trusted proxy: the header is ignored
        a = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        assert _request(a, headers="X-Forwarded-For: 198.51.100.1\r\n").startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
            assert _request(c, headers="X-Forwarded-For: 198.51.100.2\r\n").startswith(b"HTTP/1.1 503")
        a.close()


# -- logs and shutdown ------------------------------------------------------------------------


@pytest.mark.node
def test_sigterm_disconnects_clients_cleanly_and_exits_zero() -> None:
    with callbox("--log-format", "json") as s:
        client = subprocess.Popen(
            ["node", "-e", CLIENT_UNTIL_DISCONNECT, s.base], cwd=INTEROP, stdout=subprocess.PIPE, text=True
        )
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "connected"
        assert get(f"{s.base}/readyz") == (200, "ready\n")
        start = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(timeout=12) == 0
        assert time.monotonic() - start < 10
        assert client.stdout.readline().strip() == "disconnect io server disconnect"
        client.wait(timeout=5)
        assert s.proc.stderr is not None
        lines = [json.loads(line) for line in s.proc.stderr.read().splitlines() if line.strip()]
        assert any(line["msg"] == "shutting down" and line["signal"] == "SIGTERM" for line in lines)


CLIENT_UNTIL_DISCONNECT = """
const { io } = require("socket.io-client");
const s = io(process.argv[1], { transports: ["websocket"], reconnection: false });
s.on("connect", () => console.log("connected"));
s.on("disconnect", (reason) => { console.log("disconnect " + reason); process.exit(0); });
setTimeout(() => process.exit(3), 20000);
"""


def test_readme_documents_every_setting() -> None:
    from callbox.config import SETTINGS

    readme = (ROOT / "README.md").read_text()
    missing = [s.flag for s in SETTINGS if f"`{s.flag}` / `{s.env}`" not in readme]
    assert not missing, f"README's settings table lacks {missing}: run .venv/bin/python scripts/readme_settings.py"
