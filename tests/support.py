"""Helpers shared by the tests (importable as `support`: pytest puts this folder on sys.path
beside conftest.py). Fixtures live in conftest.py; plain functions and classes live here:

- `make_training`: a real `TrainingConfig` (the schema's defaults, some fields set);
- `tiny_causal_lm`: the one tiny random Llama / Qwen2 built in memory (torch imported lazily);
- `recipe_dict` / `write_recipe`: the one recipe writer (`TINY_RUN`: a two-step run);
- `Result` and `cpo_process`: the CLI in a child process (`python -m cpo_cli`, optionally under a
  launcher) for what only a real process shows; in-process runs use the `cli` fixture;
- `FakeHub`: a Hugging Face Hub stand-in on loopback for the real `huggingface_hub` client.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from cpo_cli.recipe import TrainingConfig

REPO = Path(__file__).resolve().parents[1]


def make_training(**fields: Any) -> TrainingConfig:
    """A real `training` section: the schema's defaults, with `fields` set (validated)."""
    return TrainingConfig(**fields)


# ----------------------------------------------------------------------------- tiny models

#: the vocabulary of `tiny_causal_lm` unless a test asks for another
TINY_VOCAB = 96


def tiny_causal_lm(
    arch: str = "llama", attn: str = "sdpa", init: float = 0.2, **config: Any
) -> Any:
    """A random 2-layer model (seeded: every call gives the same weights); a large init range
    makes outputs depend on context. `config` sets or overrides `LlamaConfig` / `Qwen2Config`
    fields (a smaller model, a sliding window, ...)."""
    import torch
    import transformers

    torch.manual_seed(0)
    cfg_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[arch]
    fields: dict[str, Any] = {
        "vocab_size": TINY_VOCAB,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "initializer_range": init,
        "attn_implementation": attn,
        **config,
    }
    return model_cls(cfg_cls(**fields)).float()


# ----------------------------------------------------------------------------- recipes

#: `training` fields of a quick run on the tiny models: two optimizer steps of four pairs,
#: logged each step, nothing saved or sent anywhere but metrics.jsonl
TINY_RUN: dict[str, Any] = {
    "per_device_train_batch_size": 4,
    "max_steps": 2,
    "logging_steps": 1,
    "save_strategy": "no",
    "report_to": "none",
}


def recipe_dict(
    model: Path | str,
    *,
    train: Path | None = None,
    eval: Path | None = None,
    out: Path | None = None,
    train_rows: int | None = None,
    eval_rows: int | None = None,
    peft: dict[str, Any] | None = None,
    **training: Any,
) -> dict[str, Any]:
    """A recipe as plain data: the model, the data sources (their first `*_rows` rows), the
    LoRA section, `training.output_dir` = `out`, and the `training` fields given; nothing else,
    so every other value is the schema's default."""

    def source(path: Path, rows: int | None) -> dict[str, Any]:
        return {"path": str(path), **({"max_rows": rows} if rows is not None else {})}

    data: dict[str, Any] = {}
    if train is not None:
        data["train"] = source(train, train_rows)
    if eval is not None:
        data["eval"] = source(eval, eval_rows)
    recipe: dict[str, Any] = {"model": {"name_or_path": str(model)}}
    if data:
        recipe["data"] = data
    if peft is not None:
        recipe["peft"] = peft
    settings = {"output_dir": str(out)} if out is not None else {}
    settings.update(training)
    if settings:
        recipe["training"] = settings
    return recipe


def write_recipe(path: Path, model: Path | str, **options: Any) -> Path:
    """`recipe_dict(model, **options)` written as YAML to `path`; returns `path`."""
    path.write_text(yaml.safe_dump(recipe_dict(model, **options)), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- the CLI


@dataclass
class Result:
    """What a `cpo` run left: its exit code and output streams."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __iter__(self) -> Iterator[Any]:
        """`code, out, err = cli(...)`."""
        return iter((self.exit_code, self.stdout, self.stderr))


def cpo_process(
    *args: str,
    cwd: Path = REPO,
    launcher: list[str] | None = None,
    timeout: int = 600,
    env: dict[str, str] | None = None,
    script: Path | None = None,
) -> Result:
    """`python -m cpo_cli ARGS` in a child process (under `launcher`, e.g. torchrun, when
    given), offline and without colour: for launchers, signals and the real start-up path.
    `env` adds variables; `script` runs that file instead of the `cpo_cli` module (a
    launcher's target that wraps the CLI)."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TRL_EXPERIMENTAL_SILENCE": "1",
        "NO_COLOR": "1",
        **(env or {}),
    }
    target = [str(script)] if script is not None else ["-m", "cpo_cli"]
    command = [*(launcher or [sys.executable]), *target, *args]
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    return Result(done.returncode, done.stdout, done.stderr)


# ----------------------------------------------------------------------------- the Hub

#: A route answers (method, path, body) with (status, json body, extra headers), or None to fall
#: through to the default behaviour.
Override = Callable[[str, str, bytes], "tuple[int, Any, dict[str, str]] | None"]


@dataclass
class Recorded:
    method: str
    path: str
    body: bytes
    headers: dict[str, str]


@dataclass
class FakeHub:
    """The Hub endpoints `huggingface_hub` calls to create a repo, a branch and a commit and to
    ask who a token belongs to (`alice`), on 127.0.0.1; every request is recorded. `override`
    answers any route first (errors, dataset info)."""

    max_requests: int = 40
    lifetime_s: float = 60.0
    override: Override | None = None
    requests: list[Recorded] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def calls(self) -> list[str]:
        """`METHOD /path` of every request, in order (query strings dropped)."""
        return [f"{r.method} {r.path.split('?')[0]}" for r in self.requests]

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                hub.requests.append(Recorded(self.command, self.path, body, dict(self.headers)))
                if len(hub.requests) > hub.max_requests:
                    status, payload, extra = 503, {"error": "request budget exhausted"}, {}
                else:
                    status, payload, extra = hub.answer(self.command, self.path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in extra.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        # stops by itself even if a test forgets to (or hangs)
        deadline = threading.Timer(self.lifetime_s, self.stop)
        deadline.daemon = True
        deadline.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
        if self.override is not None:
            answered = self.override(method, path, body)
            if answered is not None:
                return answered
        route = path.split("?")[0]
        if method == "POST" and route == "/api/repos/create":
            payload = json.loads(body or b"{}")
            name = f"{payload.get('organization')}/{payload.get('name')}"
            return 200, {"url": f"{self.endpoint}/{name}"}, {}
        if method == "GET" and route == "/api/whoami-v2":
            return 200, {"name": "alice", "type": "user"}, {}
        if method == "POST" and route == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}, {}
        if method == "POST" and "/branch/" in route:
            return 200, {}, {}
        if method == "POST" and "/preupload/" in route:
            files = json.loads(body)["files"]
            return (
                200,
                {
                    "files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                        for f in files
                    ]
                },
                {},
            )
        if method == "POST" and "/commit/" in route:
            repo = route.split("/api/models/")[1].split("/commit/")[0]
            return (
                200,
                {"commitUrl": f"{self.endpoint}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40},
                {},
            )
        return 404, {"error": f"no route {method} {route}"}, {}

    def commit_lines(self) -> list[dict[str, Any]]:
        """The ndjson lines of the (last) commit request."""
        commits = [r for r in self.requests if "/commit/" in r.path]
        assert commits, f"no commit request in {self.calls()}"
        return [json.loads(line) for line in commits[-1].body.splitlines() if line.strip()]
