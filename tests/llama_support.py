"""A real llama.cpp ``llama-server`` for the remote-engine tests, serving the default model's GGUF.

The binary is built once per machine by ``scripts/build_llama_server.sh`` into a
cache outside the repo (``make test`` builds it first). When it is missing and
cannot be built here (no cmake or C++ compiler), the tests that need it skip
and say so; when it can be built, the first test builds it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import PYTHON, ROOT, free_port

BUILD_SCRIPT = ROOT / "scripts" / "build_llama_server.sh"


def llama_server_binary() -> Path:
    """The built binary, building it when possible; skips the test when it cannot be built."""
    cache = Path(os.environ.get("CHAT_LLAMA_CACHE") or Path.home() / ".cache" / "team-chat" / "llama-server")
    binary = cache / "bin" / "llama-server"
    if binary.exists():
        return binary
    missing = [tool for tool in ("cmake", "c++", "cc") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"llama-server is not built and cannot be here ({', '.join(missing)} missing): "
                    "run scripts/build_llama_server.sh on a machine with cmake and a C++ compiler")
    done = subprocess.run([str(BUILD_SCRIPT)], env={**os.environ, "PYTHON": PYTHON}, capture_output=True, text=True)
    if done.returncode != 0 or not binary.exists():
        pytest.fail(f"building llama-server failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return binary


def default_gguf() -> Path:
    from app.engine.loading import default_gguf_path

    return default_gguf_path()


@dataclass
class LlamaServer:
    """``llama-server -m <SmolLM2 GGUF>`` on a free port, as an operator would run it."""

    binary: Path
    log_dir: Path
    parallel: int = 8
    context: int = 8192
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> LlamaServer:
        self.port = self.port or free_port()
        log = (self.log_dir / f"llama-server-{self.port}.log").open("ab")
        self.process = subprocess.Popen(
            [str(self.binary), "-m", str(default_gguf()), "--host", "127.0.0.1", "--port", str(self.port),
             "-np", str(self.parallel), "-c", str(self.context), "-t", "2", "--no-webui"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.process.returncode}; see {log.name}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            time.sleep(0.2)
        self.kill()
        raise RuntimeError("llama-server did not become healthy")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def complete(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy ids for a prompt, asked directly (not streamed), to compare with what the app stored.

        The sampling fields are the chat page's defaults (repetition penalty 1.1 over prompt and reply).
        """
        body = {"prompt": prompt_ids, "n_predict": max_new_tokens, "temperature": 0.0, "return_tokens": True,
                "repeat_penalty": 1.1, "repeat_last_n": len(prompt_ids) + max_new_tokens, "top_k": 50, "top_p": 0.9}
        response = httpx.post(self.url + "/completion", json=body, timeout=120)
        response.raise_for_status()
        return response.json()["tokens"]
