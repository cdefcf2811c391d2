"""Shared test helpers: database URLs, tiny models built on the spot, a real server process."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.models import MODEL_CACHE, SERVER_CONTEXT, build_tiny_llama

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
POSTGRES_URL = os.environ.get("CHAT_TEST_POSTGRES_URL") or None


async def reset_postgres(url: str) -> None:
    """Drop everything in the ``public`` schema so the test starts from an empty database."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            # a connection some earlier run leaked must not hang the suite
            await connection.execute(text("SET LOCAL lock_timeout = '10s'"))
            await connection.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            await connection.execute(text("CREATE SCHEMA public"))
    finally:
        await engine.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    """``python -m app serve`` as a real subprocess on a free port."""

    data_dir: Path
    model: str
    env: dict[str, str]
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def database_url(self) -> str:
        """``CHAT_DATABASE_URL`` when the test gives one, else the data dir's SQLite file."""
        return self.env.get("CHAT_DATABASE_URL") or f"sqlite+aiosqlite:///{self.data_dir.resolve() / 'chat.db'}"

    def start(self, timeout: float = 120.0, *, same_port: bool = False) -> ServerProcess:
        """Start (again); ``same_port`` restarts at the same address, as pages left open expect."""
        self.port = self.port if same_port and self.port else free_port()
        self.log_path = self.data_dir / f"server-{self.port}.log"
        environment = {**os.environ}
        for name in ("CHAT_DATABASE_URL", "CHAT_ENGINE_URL"):  # only the test's own choice counts
            environment.pop(name, None)
        environment.update({
            "CHAT_DATA_DIR": str(self.data_dir),
            "CHAT_CACHE_DIR": str(MODEL_CACHE),
            "GRADIO_ANALYTICS_ENABLED": "False",
            # many tests sign up crowds from one address; the per-address limit is tested on its own
            "CHAT_SIGNUP_LIMIT": "1000",
            **self.env,
        })
        log_file = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [PYTHON, "-m", "app", "serve", "--port", str(self.port), "--model", self.model],
            cwd=ROOT, env=environment, stdout=log_file, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "healthz", timeout=2).status_code == 200:
                    return self
            time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"server did not become healthy:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """Ctrl-C, as a person would; kill only if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def add_user(data_dir: Path, name: str, password: str, *, admin: bool = False) -> None:
    environment = {**os.environ, "CHAT_DATA_DIR": str(data_dir)}
    environment.pop("CHAT_DATABASE_URL", None)
    args = [PYTHON, "-m", "app", "users", "add", name, "--password-stdin"] + (["--admin"] if admin else [])
    subprocess.run(args, cwd=ROOT, env=environment, input=password + "\n", text=True, check=True,
                   capture_output=True)


@contextlib.contextmanager
def running_server(data_dir: Path, model: str, **env: str) -> Iterator[ServerProcess]:
    server = ServerProcess(data_dir, model, {"CHAT_ADMIN_PASSWORD": "admin-password", **env}).start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def tiny_team_server(tmp_path_factory, label: str, testers: Sequence[str], password: str, **env: str
                     ) -> Iterator[ServerProcess]:
    """A server on a fresh tiny Llama with these testers added: what a server test module starts once."""
    model = build_tiny_llama(tmp_path_factory.mktemp(f"{label}-model"), max_positions=SERVER_CONTEXT)
    data = tmp_path_factory.mktemp(f"{label}-data")
    with running_server(data, str(model), **env) as process:
        for name in testers:
            add_user(data, name, password)
        yield process


def two_tiny_models_file(root: Path, text: str) -> Path:
    """A models file (``text`` with ``{a}`` and ``{b}``) over two tiny Llamas of different random weights."""
    a = build_tiny_llama(root / "tiny-a", max_positions=SERVER_CONTEXT, seed=0)
    b = build_tiny_llama(root / "tiny-b", max_positions=SERVER_CONTEXT, seed=1)
    path = root / "models.toml"
    path.write_text(text.format(a=a, b=b), encoding="utf-8")
    return path


@contextlib.contextmanager
def two_model_server(tmp_path_factory, label: str, text: str, testers: Sequence[str], password: str
                     ) -> Iterator[ServerProcess]:
    """A server offering the models of ``text`` (see ``two_tiny_models_file``), each engine on one thread."""
    root = tmp_path_factory.mktemp(label)
    models = two_tiny_models_file(root, text)
    data = root / "data"
    data.mkdir()
    with running_server(data, "smollm2", CHAT_MODELS=str(models), CHAT_THREADS="1") as process:
        for name in testers:
            add_user(data, name, password)
        yield process


async def read_stored(database_url: str, username: str, conversation_id: str):
    """A chat as the database holds it, read the way the server reads it (for assertions)."""
    from storage.database import Database
    from storage.repository import Repository

    database = Database(database_url)
    try:
        repository = Repository(database)
        user = await repository.get_user(username)
        return await repository.get_conversation(user.id, conversation_id)
    finally:
        await database.dispose()


def login_cookies(base_url: str, username: str, password: str, **client_options: object) -> httpx.Cookies:
    """Log in through ``POST /login`` as a script would; returns the session cookie."""
    with httpx.Client(**client_options) as client:  # type: ignore[arg-type]
        response = client.post(base_url.rstrip("/") + "/login", data={"username": username, "password": password})
    if response.status_code != 200:
        raise RuntimeError(f"login as {username} failed: {response.status_code} {response.text}")
    return response.cookies


def api_client(base_url: str, username: str, password: str):
    """A ``gradio_client.Client`` logged in as ``username``: its ``auth=`` posts to our ``/login``."""
    from gradio_client import Client

    return Client(base_url, auth=(username, password), verbose=False)


def browser_login(page, base_url: str, username: str, password: str) -> None:
    """Log in on our login page in a Playwright ``page`` and wait until the chat page is ready."""
    page.goto(base_url.rstrip("/") + "/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.locator("#message textarea").wait_for(timeout=30_000)


def copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, dirs_exist_ok=True)
    return target
