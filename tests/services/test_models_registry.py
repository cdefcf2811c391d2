"""The models registry (``CHAT_MODELS``): what a good file offers, and the one sentence a bad file gets.

The file is read by the real ``tomllib`` from a real file; ``python -m app models`` runs
as the operator runs it, in a subprocess; a server whose models file is bad, or whose
inference server does not answer, is started for real and must end with one sentence.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from app.config import Settings
from app.engine.loading import DEFAULT_MODEL_NAME
from app.models_registry import ModelDefaults, RegistryError, load_registry, registry_from_settings
from tests.models import build_tiny_llama
from tests.support import PYTHON, ROOT, free_port

GOOD = """
default = "warm"

[[models]]
name = "tiny-a"
label = "Tiny A"
source = "{folder}"
temperature = 0.3
system_prompt = "Be brief."

[[models]]
name = "warm"
label = "Tiny A, warm"
base = "tiny-a"
temperature = 1.2

[[models]]
name = "remote"
label = "On llama.cpp"
url = "http://127.0.0.1:{port}/"
protocol = "llamacpp"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text, encoding="utf-8")
    return path


def run_app(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **env}
    environment.pop("CHAT_DATABASE_URL", None)
    return subprocess.run(
        [PYTHON, "-m", "app", *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300
    )


def test_a_good_file_lists_entries_default_first_and_merges_variant_defaults(tmp_path):
    registry = load_registry(write(tmp_path, GOOD.format(folder=tmp_path, port=9)))
    assert registry.names == ("warm", "tiny-a", "remote")
    assert registry.default.name == "warm"
    warm = registry.get("warm")
    # the variant changes the temperature and keeps its base's system prompt; it has no engine of its own
    assert warm.defaults == ModelDefaults(system_prompt="Be brief.", temperature=1.2)
    assert registry.weights_of("warm").name == "tiny-a"
    assert [entry.name for entry in registry.with_engines()] == ["tiny-a", "remote"]
    remote = registry.get("remote")
    assert (remote.url, remote.protocol, remote.tokenizer) == ("http://127.0.0.1:9", "llamacpp", "smollm2")
    with pytest.raises(KeyError, match="no model called 'nope'"):
        registry.get("nope")


def test_entries_opt_into_the_arena_with_the_aliases_a_reply_must_not_say(tmp_path):
    text = GOOD.format(folder=tmp_path, port=9).replace(
        'system_prompt = "Be brief."', 'system_prompt = "Be brief."\narena = true\naliases = ["TinyLM", "Tiny"]'
    ) + '[[models]]\nname = "cold"\nbase = "tiny-a"\ntemperature = 0.1\narena = true\n'
    registry = load_registry(write(tmp_path, text))
    assert [(e.name, e.aliases) for e in registry if e.arena] == [("tiny-a", ("TinyLM", "Tiny")), ("cold", ())]
    assert not registry.get("warm").arena and not registry.get("remote").arena


def test_without_a_file_the_registry_is_todays_one_model(tmp_path):
    settings = Settings.from_env({"CHAT_DATA_DIR": str(tmp_path)})
    registry = registry_from_settings(settings)
    assert registry.from_file is None
    assert registry.names == (DEFAULT_MODEL_NAME,)
    assert registry.default.source == "smollm2"
    remote = registry_from_settings(
        Settings.from_env(
            {
                "CHAT_DATA_DIR": str(tmp_path),
                "CHAT_ENGINE_URL": "http://127.0.0.1:8080",
                "CHAT_ENGINE_PROTOCOL": "openai",
            }
        )
    )
    assert remote.default.url == "http://127.0.0.1:8080" and remote.default.protocol == "openai"
    assert remote.default.tokenizer == "smollm2"


BAD_FILES = {
    "unknown key": (
        '[[models]]\nname = "a"\nsource = "smollm2"\ntemprature = 1.0\n',
        "model 'a' has unknown key(s) temprature",
    ),
    "missing base": ('[[models]]\nname = "a"\nbase = "b"\n', "model 'a' names base 'b', which the models file"),
    "duplicate": (
        '[[models]]\nname = "a"\nsource = "smollm2"\n[[models]]\nname = "a"\nsource = "smollm2"\n',
        "model 'a' is listed twice",
    ),
    "bad protocol": (
        '[[models]]\nname = "r"\nurl = "http://127.0.0.1:9"\nprotocol = "grpc"\n',
        "model 'r': protocol must be 'llamacpp' or 'openai', not 'grpc'",
    ),
    "two places": (
        '[[models]]\nname = "a"\nsource = "smollm2"\nurl = "http://x"\n',
        "model 'a' needs exactly one of source",
    ),
    "variant with weights": (
        '[[models]]\nname = "a"\nsource = "smollm2"\n[[models]]\nname = "b"\nbase = "a"\nsource = "smollm2"\n',
        "model 'b' is a variant of 'a'",
    ),
    "circle": ('[[models]]\nname = "a"\nbase = "b"\n[[models]]\nname = "b"\nbase = "a"\n', "run in a circle"),
    "bad temperature": (
        '[[models]]\nname = "a"\nsource = "smollm2"\ntemperature = "hot"\n',
        "model 'a': temperature must be a number",
    ),
    "no name": ('[[models]]\nsource = "smollm2"\n', "entry 1 of the models file needs a short name"),
    "empty": ('default = "a"\n', "lists no model"),
    "not toml": ('[[models]\nname = "a"', "is not valid TOML"),
    "arena not a flag": (
        '[[models]]\nname = "a"\nsource = "smollm2"\narena = "yes"\n', "model 'a': arena must be true or false"
    ),
    "aliases not a list": (
        '[[models]]\nname = "a"\nsource = "smollm2"\naliases = "Smol"\n', "model 'a': aliases must be a list"
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_file_is_one_sentence_naming_the_entry(tmp_path, case):
    text, sentence = BAD_FILES[case]
    with pytest.raises(RegistryError) as raised:
        load_registry(write(tmp_path, text))
    message = str(raised.value)
    assert sentence in message
    assert "\n" not in message


def test_cli_lists_each_entry_and_whether_it_answers(tmp_path):
    folder = build_tiny_llama(tmp_path / "tiny-a")
    path = write(tmp_path, GOOD.format(folder=folder, port=free_port()))
    done = run_app(
        "models", env={"CHAT_MODELS": str(path), "CHAT_DATA_DIR": str(tmp_path), "CHAT_PORT": str(free_port())}
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert str(path) in lines[0]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert list(rows) == ["warm", "tiny-a", "remote"]
    assert "Tiny A, warm" in rows["warm"] and f"embedded: {folder}" in rows["warm"] and " tiny-a " in rows["warm"]
    assert "ready to load" in rows["tiny-a"]
    assert "llamacpp server at http://127.0.0.1:" in rows["remote"] and "no answer" in rows["remote"]


def test_cli_refuses_a_bad_file_with_one_sentence(tmp_path):
    path = write(tmp_path, BAD_FILES["missing base"][0])
    done = run_app("models", env={"CHAT_MODELS": str(path), "CHAT_DATA_DIR": str(tmp_path)})
    assert done.returncode == 2
    assert done.stderr.strip() == "error: model 'a' names base 'b', which the models file does not list"


def test_serve_stops_at_start_when_a_listed_server_does_not_answer(tmp_path):
    folder = build_tiny_llama(tmp_path / "tiny-a")
    path = write(tmp_path, GOOD.format(folder=folder, port=free_port()))
    done = run_app(
        "serve",
        "--port",
        str(free_port()),
        env={
            "CHAT_MODELS": str(path),
            "CHAT_DATA_DIR": str(tmp_path),
            "CHAT_ENGINE_WAIT_SECONDS": "1",
            "CHAT_ENGINE_PROCESS": "0",
            "GRADIO_ANALYTICS_ENABLED": "False",
        },
    )
    assert done.returncode == 2
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: model 'remote' (llamacpp server at http://127.0.0.1:")
    assert "is not ready after 1 s" in error


def test_serve_stops_at_start_on_a_bad_file(tmp_path):
    path = write(tmp_path, BAD_FILES["duplicate"][0])
    done = run_app("serve", "--port", str(free_port()), env={"CHAT_MODELS": str(path), "CHAT_DATA_DIR": str(tmp_path)})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "error: model 'a' is listed twice; each name must be unique"
