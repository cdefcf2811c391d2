"""The real server with a models file: two embedded tiny models (different random weights) and a
variant, each embedded model in its own engine process; one that dies is shown unavailable while
the other keeps serving, and comes back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.models import SERVER_CONTEXT, build_tiny_llama
from tests.page_client import PASSWORD, bubble_texts, client_for, message_count, send, stored
from tests.support import PYTHON, ROOT, add_user, login_cookies, running_server, two_tiny_models_file

METRICS_TOKEN = "models-metrics-token"
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


def models_file(root: Path, text: str = MODELS) -> Path:
    """The models file over two tiny Llamas of different random weights, built once in ``root``."""
    return two_tiny_models_file(root, text)


def send_to(client, text: str, chat_id: str = "", model: str | None = None, max_new_tokens: int = 4) -> tuple:
    """``/send`` with the page's model control (the 8th input); returns the final outputs."""
    job = client.submit(text, chat_id, "", 0.0, 0.9, max_new_tokens, "", model, api_name="/send")
    list(job)
    return job.result()


def control_value(output) -> str:
    """The model control's value as an API client receives it (a bare value, or an update with choices)."""
    return output["value"] if isinstance(output, dict) else output


@pytest.fixture(scope="module")
def models_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("models-server")
    models = models_file(root)
    data = root / "data"
    data.mkdir()
    with running_server(
        data, "smollm2", CHAT_MODELS=str(models), CHAT_THREADS="1", CHAT_METRICS_TOKEN=METRICS_TOKEN
    ) as server:
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


def test_metrics_show_each_engine_once_under_its_model(models_server):
    scrape = httpx.get(
        models_server.url + "metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=30
    ).text
    up = sorted(line for line in scrape.splitlines() if line.startswith("chat_engine_up{"))
    # two engines (the variant runs on tiny-a's), each up
    assert up == ['chat_engine_up{model="tiny-a"} 1.0', 'chat_engine_up{model="tiny-b"} 1.0']


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


def test_a_new_chat_with_a_picked_model_is_written_by_it_and_exported_per_message(models_server):
    client = client_for(models_server, "tess")
    chat_id = send_to(client, "Hello B", model="tiny-b")[2]
    record = stored(models_server, "tess", chat_id)
    assert record.model == "tiny-b" and [m.model for m in record.messages] == ["tiny-b", "tiny-b"]
    # a follow-up that names no model (an older client) stays with the chat's model
    send(client, "And more", chat_id, max_new_tokens=4)
    record = stored(models_server, "tess", chat_id)
    assert [(m.model, m.variant) for m in record.messages] == [("tiny-b", None)] * 4
    # reopening the chat puts its model in the page's model control (the last output of /open)
    assert control_value(client.predict(chat_id, api_name="/open")[-1]) == "tiny-b"
    cookies = login_cookies(models_server.url, "tess", PASSWORD)

    def export(fmt: str) -> httpx.Response:
        return httpx.get(f"{models_server.url}export/{chat_id}", params={"format": fmt}, cookies=cookies, timeout=60)

    messages = export("json").json()["conversations"][0]["messages"]
    assert [(m["model"], m["variant"]) for m in messages] == [("tiny-b", None)] * 4
    turns = json.loads(export("jsonl").text.splitlines()[0])["turns"]
    assert [(turn["model"], turn["variant"]) for turn in turns] == [("tiny-b", None)] * 4
    assert "- **Model:** tiny-b" in export("markdown").text
    # a variant: its own name on the chat, its base's weights and its name on each message
    warm_id = send_to(client, "Hello warm", model="tiny-a-warm")[2]
    warm = stored(models_server, "tess", warm_id)
    assert warm.model == "tiny-a-warm"
    assert [(m.model, m.variant) for m in warm.messages] == [("tiny-a", "tiny-a-warm")] * 2


def test_an_unknown_model_is_refused_with_a_sentence_and_nothing_is_stored(models_server):
    client = client_for(models_server, "tess")
    before = message_count(models_server)
    final = send_to(client, "Hello nobody", model="gpt-9")
    assert final[1] == "Hello nobody"  # the typed text goes back
    assert "The server offers no model called 'gpt-9'; choose one of: tiny-a, tiny-b, tiny-a-warm." in final[3]
    assert message_count(models_server) == before


def test_a_chat_whose_model_is_gone_says_so_and_continues_with_another(tmp_path):
    models = models_file(tmp_path)
    data = tmp_path / "data"
    with running_server(data, "smollm2", CHAT_MODELS=str(models), CHAT_THREADS="1") as server:
        add_user(data, "tess", PASSWORD)
        chat_id = send_to(client_for(server, "tess"), "Hello B", model="tiny-b")[2]
    only_a = tmp_path / "only-a.toml"
    only_a.write_text(
        models.read_text().replace(
            '[[models]]\nname = "tiny-b"\nlabel = "Tiny B"\nsource = "' + str(tmp_path / "tiny-b") + '"\n', ""
        ),
        encoding="utf-8",
    )
    assert "tiny-b" not in only_a.read_text()
    with running_server(data, "smollm2", CHAT_MODELS=str(only_a), CHAT_THREADS="1") as server:
        client = client_for(server, "tess")
        opened = client.predict(chat_id, api_name="/open")
        assert "This chat was written by tiny-b, which this server no longer offers" in opened[2]
        assert control_value(opened[-1]) == "tiny-a"  # the model control offers the default instead
        final = send_to(client, "Go on", chat_id, model="tiny-a")
        record = stored(server, "tess", chat_id)
        assert record.model == "tiny-a"
        assert [(m.role, m.model) for m in record.messages] == [
            ("user", "tiny-b"),
            ("assistant", "tiny-b"),
            ("user", "tiny-a"),
            ("assistant", "tiny-a"),
        ]
        # the chat says so once, on the first reply of the new model; reopened, no more warning
        reopened = client.predict(chat_id, api_name="/open")
        assert reopened[2] == ""
        notes = [text for role, text in bubble_texts(reopened[0]) if "continued with" in text]
        assert len(notes) == 1 and "tiny-a" in notes[0] and "re-encoded from text" in notes[0]
        assert final[3] == ""


@pytest.fixture(autouse=True)
def _data_dir_exists(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir(exist_ok=True)


def test_a_registry_with_two_embedded_models_and_a_real_llama_server(tmp_path):
    """The issue's three entries: two embedded tiny models and SmolLM2 on a real llama-server; a chat on
    each, and ``python -m app models`` says all three answer."""
    from tests.llama_support import LlamaServer, llama_server_binary

    llama = LlamaServer(llama_server_binary(), tmp_path, parallel=2, context=4096).start()
    try:
        text = MODELS + f'\n[[models]]\nname = "smol-llamacpp"\nlabel = "SmolLM2 on llama.cpp"\nurl = "{llama.url}"\n'
        models = models_file(tmp_path, text)
        with running_server(tmp_path / "data", "smollm2", CHAT_MODELS=str(models), CHAT_THREADS="1") as server:
            add_user(tmp_path / "data", "tess", PASSWORD)
            client = client_for(server, "tess")
            for name in ("tiny-a", "tiny-b", "smol-llamacpp"):
                chat_id = send_to(client, f"Hello {name}", model=name, max_new_tokens=6)[2]
                record = stored(server, "tess", chat_id)
                assert record.model == name and record.messages[-1].model == name
                assert record.messages[-1].role == "assistant" and record.messages[-1].completion_tokens
            environment = {
                **os.environ,
                "CHAT_DATA_DIR": str(server.data_dir),
                "CHAT_PORT": str(server.port),
                "CHAT_MODELS": str(models),
            }
            listing = subprocess.run(
                [PYTHON, "-m", "app", "models"], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
            )
            rows = listing.stdout.splitlines()[2:]
            assert [row.split()[0] for row in rows] == ["tiny-a", "tiny-b", "tiny-a-warm", "smol-llamacpp"]
            assert all(row.endswith("answers (served now)") for row in rows), listing.stdout
    finally:
        llama.kill()
