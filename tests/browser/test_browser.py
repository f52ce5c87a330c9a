"""Real browsers: two headless Chromium pages (the demo in examples/browser/) place WebRTC calls
through a real ``callbox`` process, driven by Playwright (tests/browser/run.mjs).

Each scenario runs in a fresh network namespace that has only ``lo`` (tests/browser/in_netns.py):
callbox, Chromium and the media between the two pages all stay on 127.0.0.1, and the driver checks
that every ICE candidate is a loopback one. Without the namespace (not root, no CAP_SYS_ADMIN) the
tests skip, loudly, rather than let Chromium pair the machine's other addresses.

A network blip (issue 12): in ``blip`` bob reaches callbox through a TCP proxy in the driver
(tests/browser/tcpproxy.mjs) that is cut for 5 s; the video keeps flowing peer to peer, alice's page
says bob is reconnecting, and socket.io-client's connection state recovery brings the call back as
before. ``leave`` checks what Chromium sends: nothing when the network goes (offline emulation), a
close frame with 1001 when a tab closes (callbox sees "client close" and the call ends at once, not
after the grace), and that a tab on long-polling ends its call at once too (the page's
"beforeunload" Socket.IO disconnect).

Several devices and glare (issue 13, callbox ``--max-devices 2``): in ``devices`` bob is signed in on
two pages (two browser profiles, two deviceIds); alice's call rings both; a decline on one says
"declined on another device" on the other; an answer on one says "answered on another device" on the
other, and alice and the page that answered have video both ways. In ``glare`` alice and bob call
each other at once (what callbox sends bob is held in the TCP proxy meanwhile, so that alice's call
has not reached him when he presses "call"): one call, alice (its caller) offers, bob answers.

Needs Debian's ``chromium`` at /usr/bin/chromium and ``npm ci`` in examples/browser and
tests/browser. The mid-call screenshot lands in test-artifacts/browser/ (the path is printed);
``CALLBOX_UPDATE_SCREENSHOT=1`` also copies it to examples/browser/screenshot.png for the README,
alice's page while bob is reconnecting to examples/browser/reconnecting.png, and bob's second page
saying "answered on another device" to examples/browser/answered-elsewhere.png.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from _paths import BROWSER, ROOT

DRIVER = BROWSER
DEMO = ROOT / "examples" / "browser"
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
CALLBOX = Path(sys.executable).parent / "callbox"
NODE = shutil.which("node")
NO_NAMESPACE = 77  # in_netns.py's exit status when it cannot make the namespace

pytestmark = [
    pytest.mark.browser,
    pytest.mark.node,
    pytest.mark.process,
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"no {CHROMIUM}: apt-get install chromium"),
    pytest.mark.skipif(NODE is None, reason="node is not installed"),
    pytest.mark.skipif(not (DRIVER / "node_modules" / "playwright-core").is_dir(),
                       reason="tests/browser: run `npm ci` first"),
    pytest.mark.skipif(not (DEMO / "node_modules" / "socket.io-client").is_dir(),
                       reason="examples/browser: run `npm ci` first"),
    pytest.mark.skipif(not CALLBOX.exists(), reason=f"no {CALLBOX}: pip install -e ."),
]

SCENARIOS = ["call", "call-polling", "call-wss", "audio", "reject", "cancel", "timeout", "busy-offline-takeover",
             "blip", "blip-resume", "leave", "devices", "glare"]
# what CALLBOX_UPDATE_SCREENSHOT refreshes
SCREENSHOTS = {"call": "screenshot.png", "blip": "reconnecting.png", "devices": "answered-elsewhere.png"}


def _in_netns(*argv: str | Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, DRIVER / "in_netns.py", *argv],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(scope="module")
def netns() -> None:
    """Skip, loudly, when a loopback-only network namespace cannot be made here."""
    probe = _in_netns(sys.executable, "-c", "", timeout=30)
    if probe.returncode == NO_NAMESPACE:
        message = (
            "BROWSER TESTS SKIPPED: no loopback-only network namespace "
            f"({probe.stderr.strip()}). They need root (CAP_SYS_ADMIN) so that WebRTC media stays "
            "on 127.0.0.1; they will not run with the machine's other addresses."
        )
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    assert probe.returncode == 0, probe.stderr


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A test CA's certificate for 127.0.0.1, and the SHA-256 of its public key for Chromium's
    --ignore-certificate-errors-spki-list (which trusts that one key and nothing else)."""
    trustme = pytest.importorskip("trustme")
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(folder / "cert.pem"), append=True)
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    leaf = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
    spki = leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return {
        "cert": str(folder / "cert.pem"),
        "key": str(folder / "key.pem"),
        "spki": base64.b64encode(hashlib.sha256(spki).digest()).decode(),
    }


def _report(run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    for line in reversed(lines):
        obj = json.loads(line)
        if "result" in obj:
            return dict(obj)
    pytest.fail(f"the driver gave no result (exit {run.returncode})\n{run.stdout}\n{run.stderr}")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_browser(scenario: str, netns: None, certificate: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    argv: list[str | Path] = [
        NODE or "node", DRIVER / "run.mjs",
        "--scenario", scenario,
        "--callbox", CALLBOX,
        "--static", DEMO,
        "--artifacts", ARTIFACTS,
        "--chromium", CHROMIUM,
        "--tls-cert", certificate["cert"],
        "--tls-key", certificate["key"],
        "--spki", certificate["spki"],
    ]
    if scenario in SCREENSHOTS and os.environ.get("CALLBOX_UPDATE_SCREENSHOT"):
        argv += ["--screenshot-copy", DEMO / SCREENSHOTS[scenario]]
    run = _in_netns(*argv, timeout=90)
    report = _report(run)
    if report["result"] != "pass":
        pytest.fail(
            f"browser scenario {scenario!r} failed: {report.get('error')}\n"
            f"pages: {json.dumps(report.get('pages'), indent=1)}\n"
            f"callbox: {report.get('server', '')}\n"
            f"driver stderr: {run.stderr[-4000:]}",
            pytrace=False,
        )
    assert run.returncode == 0, run.stderr
    detail = report.get("detail") or {}
    if scenario == "leave":
        # What Chromium sent and callbox saw, for the log (the driver has checked them).
        with capsys.disabled():
            print(f"\n[browser leave] Chromium {detail.get('chromium')}: offline -> {detail.get('offline')}; "
                  f"tab closed -> {detail.get('tabClose')}; polling tab closed -> {detail.get('pollingTabClose')}",
                  flush=True)
    if scenario.startswith("blip"):
        with capsys.disabled():
            print(f"\n[browser {scenario}] alice told after {detail.get('toldAfterMs')} ms; back in the call "
                  f"{detail.get('recoveredAfterMs')} ms after the network returned", flush=True)
    screenshot = detail.get("screenshot")
    if screenshot:
        assert Path(screenshot).is_file()
        with capsys.disabled():
            print(f"\n[browser {scenario}] mid-call screenshot: {screenshot}", flush=True)
