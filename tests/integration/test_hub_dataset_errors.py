"""A Hub dataset name without HF_HUB_OFFLINE: one request to a loopback Hub stand-in (or to a
closed port) gives a clear error at once, instead of `datasets`' ~25 s of retries."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from support import FakeHub

from cpo_cli.data.sources import load_rows
from cpo_cli.errors import DataError
from cpo_cli.recipe import DataSource

#: dataset name → (status, X-Error-Code) the stand-in answers for its info request
ANSWERS = {
    "alice/missing": (404, "RepoNotFound"),
    "alice/gated": (403, "GatedRepo"),
    "alice/norev": (404, "RevisionNotFound"),
}


def dataset_info_answers(method: str, path: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
    """The stand-in's answer to the dataset info request, per `ANSWERS`."""
    for name, (status, code) in ANSWERS.items():
        if path.startswith(f"/api/datasets/{name}"):
            headers = {"X-Error-Code": code, "X-Error-Message": "stand-in"}
            return status, {"error": "stand-in"}, headers
    return 500, {"error": "unexpected request"}, {}


@pytest.fixture
def stand_in(fake_hub: FakeHub) -> FakeHub:
    fake_hub.override = dataset_info_answers
    return fake_hub


@pytest.mark.parametrize(
    ("name", "revision", "says", "hint"),
    [
        ("alice/missing", None, "no dataset 'alice/missing' on the Hugging Face Hub", "HF_TOKEN"),
        ("alice/gated", None, "is gated", "accept its terms"),
        ("alice/norev", "v9", "has no revision 'v9'", "--revision"),
    ],
)
def test_hub_answers_become_one_line_errors(
    stand_in: FakeHub, name: str, revision: str | None, says: str, hint: str
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
