"""A Hub dataset name without HF_HUB_OFFLINE: one request to a loopback Hub stand-in (or to a
closed port) gives a clear error at once, instead of `datasets`' ~25 s of retries."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cpo_cli.data.sources import load_rows
from cpo_cli.errors import DataError
from cpo_cli.recipe import DataSource

#: dataset name → (status, X-Error-Code) the stand-in answers for its info request
ANSWERS = {
    "alice/missing": (404, "RepoNotFound"),
    "alice/gated": (403, "GatedRepo"),
    "alice/norev": (404, "RevisionNotFound"),
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        for name, (status, code) in ANSWERS.items():
            if self.path.startswith(f"/api/datasets/{name}"):
                body = b'{"error": "stand-in"}'
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", "stand-in")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture
def stand_in(online: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    yield
    server.shutdown()


@pytest.mark.parametrize(
    ("name", "revision", "says", "hint"),
    [
        ("alice/missing", None, "no dataset 'alice/missing' on the Hugging Face Hub", "HF_TOKEN"),
        ("alice/gated", None, "is gated", "accept its terms"),
        ("alice/norev", "v9", "has no revision 'v9'", "--revision"),
    ],
)
def test_hub_answers_become_one_line_errors(
    stand_in: None, name: str, revision: str | None, says: str, hint: str
) -> None:
    started = time.monotonic()
    with pytest.raises(DataError) as caught:
        load_rows(DataSource(path=name, revision=revision))
    assert says in str(caught.value)
    assert hint in (caught.value.hint or "")
    assert time.monotonic() - started < 10  # one request, not datasets' retry loop


def test_an_unreachable_hub_fails_fast_and_says_how_to_go_offline(
    online: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(DataError) as caught:
        load_rows(DataSource(path="alice/never-downloaded"))
    assert "cannot reach the Hugging Face Hub" in str(caught.value)
    assert "HF_HUB_OFFLINE=1" in (caught.value.hint or "")
    assert time.monotonic() - started < 10
