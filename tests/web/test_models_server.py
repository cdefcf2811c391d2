"""The real server with a models file: two embedded tiny models (different random weights) and a
variant, each embedded model in its own engine process; one that dies is shown unavailable while
the other keeps serving, and comes back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.models import SERVER_CONTEXT, build_tiny_llama
from tests.page_client import PASSWORD, client_for, send, stored
from tests.support import PYTHON, ROOT, add_user, running_server

MODELS = """
[[models]]
name = "tiny-a"
label = "Tiny A"
source = "{a}"

[[models]]
name = "tiny-b"
label = "Tiny B"
source = "{b}"

[[models]]
name = "tiny-a-warm"
label = "Tiny A, warm"
base = "tiny-a"
temperature = 1.2
"""


@pytest.fixture(scope="module")
def models_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("models-server")
    a = build_tiny_llama(root / "tiny-a", max_positions=SERVER_CONTEXT, seed=0)
    b = build_tiny_llama(root / "tiny-b", max_positions=SERVER_CONTEXT, seed=1)
    models_file = root / "models.toml"
    models_file.write_text(MODELS.format(a=a, b=b), encoding="utf-8")
    data = root / "data"
    data.mkdir()
    with running_server(data, "smollm2", CHAT_MODELS=str(models_file), CHAT_THREADS="1") as server:
        add_user(data, "tess", PASSWORD)
        yield server


def health(server) -> tuple[int, dict]:
    response = httpx.get(server.url + "healthz", timeout=30)
    return response.status_code, response.json()


def wait_for(predicate, seconds: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_every_entry_is_served_each_embedded_model_in_its_own_process(models_server):
    code, report = health(models_server)
    assert code == 200
    models = report["models"]
    assert list(models) == ["tiny-a", "tiny-b", "tiny-a-warm"]
    assert all(state["healthy"] for state in models.values())
    # the variant is the same engine (the same process, the same weights), tiny-b has its own
    assert models["tiny-a-warm"]["pid"] == models["tiny-a"]["pid"] != models["tiny-b"]["pid"]
    assert models["tiny-a-warm"]["weights"] == "tiny-a"
    environment = {
        **os.environ,
        "CHAT_DATA_DIR": str(models_server.data_dir),
        "CHAT_PORT": str(models_server.port),
        "CHAT_MODELS": models_server.env["CHAT_MODELS"],
    }
    listing = subprocess.run(
        [PYTHON, "-m", "app", "models"], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )
    assert listing.returncode == 0, listing.stderr
    rows = listing.stdout.splitlines()[2:]
    assert [row.split()[0] for row in rows] == ["tiny-a", "tiny-b", "tiny-a-warm"]
    assert all(row.endswith("answers (served now)") for row in rows)


def test_a_model_that_dies_is_shown_unavailable_and_the_default_keeps_serving(models_server):
    _code, report = health(models_server)
    pid_b = report["models"]["tiny-b"]["pid"]
    os.kill(pid_b, signal.SIGKILL)
    down = wait_for(
        lambda: (r := health(models_server)[1])["models"]["tiny-b"]["healthy"] is False and r, 30, "tiny-b shown down"
    )
    assert down["status"] == "ok" and down["models"]["tiny-a"]["healthy"]
    assert down["models"]["tiny-b"]["reason"]
    client = client_for(models_server, "tess")
    _, final = send(client, "Hello while B is down", max_new_tokens=4)
    chat_id = final[2]
    record = stored(models_server, "tess", chat_id)
    assert record.model == "tiny-a" and record.messages[-1].role == "assistant"
    # the supervisor starts B again
    up = wait_for(lambda: (r := health(models_server)[1])["models"]["tiny-b"]["healthy"] and r, 120, "tiny-b back")
    assert up["models"]["tiny-b"]["pid"] != pid_b


def test_no_models_file_means_one_entry_named_as_before(tmp_path):
    model = build_tiny_llama(tmp_path / "only-model", max_positions=SERVER_CONTEXT)
    with running_server(tmp_path / "data", str(model), CHAT_ENGINE_PROCESS="0") as server:
        code, report = health(server)
    assert code == 200 and report["model"] == "only-model"
    assert list(report["models"]) == ["only-model"]


@pytest.fixture(autouse=True)
def _data_dir_exists(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir(exist_ok=True)
