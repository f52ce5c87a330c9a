"""Operating the signalling server as a real process: token auth, metrics after a scripted set of
calls, structured logs, and a graceful shutdown with calls in flight."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from _paths import INTEROP
from _proc import Server, callbox, get, wait_until

pytestmark = pytest.mark.process

SECRET = "a-test-secret-of-at-least-32-bytes-long"


def scenario(server: Server, *args: str) -> list[str]:
    out = subprocess.run(["node", "ops_client.mjs", server.base, *args], cwd=INTEROP,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()


def stop(server: Server) -> list[str]:
    """Stop the server (SIGTERM) and return its log. The server always logs something (at least
    its start and its stop), so an empty log means it was not captured: that fails here rather
    than pass every "nothing bad was logged" check."""
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 0
    assert server.proc.stderr is not None
    lines = server.proc.stderr.read().splitlines()
    assert lines, "the server's log is empty: it was not captured"
    return lines


@pytest.mark.node
def test_token_auth_refuses_the_classic_attacks() -> None:
    now = int(time.time())
    good = jwt.encode({"sub": "alice", "exp": now + 60}, SECRET, algorithm="HS256")
    head, body, _ = good.split(".")
    cases = [
        {"token": good, "userId": "alice"},
        {"token": good, "userId": "bob"},  # a token for another user
        {"token": None, "userId": "alice"},  # no token at all
        {"token": "garbage", "userId": "alice"},
        {"token": jwt.encode({"sub": "alice", "exp": now - 5}, SECRET, algorithm="HS256"), "userId": "alice"},
        {"token": jwt.encode({"sub": "alice", "exp": now + 60}, "x" * 40, algorithm="HS256"), "userId": "alice"},
        {"token": f"{head}.{body}.", "userId": "alice"},  # signature stripped
        {"token": jwt.encode({"sub": "alice", "exp": now + 60}, None, algorithm="none"), "userId": "alice"},
    ]
    with callbox("--auth-secret", SECRET) as s:
        seen = [json.loads(line) for line in scenario(s, "auth", json.dumps(cases))]
        lines = stop(s)
    socket_id = seen[0]["join"]["socketId"]
    assert seen[0] == {"connected": True, "join": {"ok": True, "userId": "alice", "socketId": socket_id}}
    assert seen[1]["connected"] is True
    assert seen[1]["join"] == {"ok": False, "code": "UNAUTHORIZED", "message": "Your token is for another user"}
    for refused in seen[2:]:
        assert refused == {"connected": False, "error": "Unauthorized"}
    assert not any(good in line for line in lines), "a token was logged"


def test_open_server_says_so_at_startup() -> None:
    with callbox() as s:
        lines = stop(s)
    assert any("no --auth-secret" in line for line in lines)


def parse(body: str) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


@pytest.mark.node
def test_metrics_and_logs_after_a_scripted_set_of_calls() -> None:
    with callbox("--log-format", "json") as s:
        result = json.loads(scenario(s, "calls")[-1])

        def scrape() -> dict[str, float] | None:
            status, body = get(f"{s.base}/metrics")
            assert status == 200
            m = parse(body)
            return m if m["callbox_users_online"] == 0 else None

        # The clients have exited; wait for the server to see them go.
        during = wait_until(scrape, 5, "callbox_users_online to fall to 0")
        lines = stop(s)
    assert result == {"done": True, "offline": "USER_OFFLINE", "busy": "USER_BUSY"}
    m = during
    assert m["callbox_calls_total{outcome=answered}"] == 1
    assert m["callbox_calls_total{outcome=rejected}"] == 1
    assert m["callbox_calls_total{outcome=offline}"] == 1
    assert m["callbox_calls_total{outcome=busy}"] == 1
    assert m["callbox_calls_total{outcome=cancelled}"] == 1
    assert m["callbox_calls_total{outcome=timeout}"] == 0
    assert m["callbox_calls_active"] == 0
    assert m["callbox_calls_peak"] == 1
    # The scenario's clients have gone by the time of the scrape: nobody is left online.
    assert m["callbox_users_online"] == 0
    assert m["callbox_connections{transport=websocket}"] == 0
    assert m["callbox_call_setup_seconds_count"] == 1
    assert m["callbox_call_duration_seconds_count"] == 1
    assert m["callbox_events_received_total{event=call:initiate}"] == 5
    assert m["callbox_events_received_total{event=ice:candidate}"] == 3
    assert m["callbox_events_received_total{event=unknown}"] == 1
    assert m["callbox_events_sent_total{event=ice:candidate}"] == 3
    assert m["callbox_events_sent_total{event=call:incoming}"] == 3
    assert m["callbox_errors_total{code=USER_BUSY}"] == 1
    assert m["callbox_errors_total{code=INVALID_PAYLOAD}"] == 1
    assert m["process_resident_memory_bytes"] > 0

    records = [json.loads(line) for line in lines]  # every line is one JSON object
    calls = [r for r in records if r["msg"].startswith("call ")]
    answered = [r for r in calls if r["msg"] == "call ended" and "talk_s" in r]
    assert len(answered) == 1 and answered[0]["reason"] == "hangup" and answered[0]["by"] == "alice"
    assert {r["msg"] for r in calls} == {"call initiated", "call accepted", "call ended"}
    assert all(r["call"] and r["caller"] == "alice" for r in calls)
    assert sum(r["msg"] == "user joined" for r in records) == 3
    assert sum(r["msg"] == "user left" for r in records) == 3
    text = "\n".join(lines)
    assert "SECRET-SDP-BODY" not in text and "SECRET-CANDIDATE" not in text


@pytest.mark.node
def test_sigterm_ends_calls_with_server_shutdown_and_exits_zero() -> None:
    with callbox("--log-format", "json") as s:
        client = subprocess.Popen(["node", "ops_client.mjs", s.base, "shutdown"], cwd=INTEROP,
                                  stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "incall"
        start = time.monotonic()
        lines = stop(s)
        assert time.monotonic() - start < 10
        seen = json.loads(client.stdout.readline())
        client.wait(timeout=5)
    for party in ("alice", "bob"):
        assert seen[party] == [["call:ended", "server_shutdown", None], ["disconnect", "io server disconnect"]]
    ended = [json.loads(line) for line in lines if '"call ended"' in line]
    assert len(ended) == 1 and ended[0]["reason"] == "server_shutdown"
