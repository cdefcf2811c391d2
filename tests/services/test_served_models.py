"""Several models in one chat service: each chat is written by its own model's engine, a variant
shares its base's engine, an unknown name is refused, and a model that is down leaves the others serving.

Two real tiny Llamas with different random weights (seeds 0 and 1), each in its own
real engine (a worker thread each), over the real migrated repository.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.engine import LoadedModel, load_model
from app.services.chat import ChatOptions, ChatService
from app.services.errors import Busy
from app.services.export_formats import import_json, write_export
from app.services.served_models import ServedModel, ServedModels, UnknownModel
from storage.journal import Journal
from tests.engine_support import gate_on, prompt_format, running_engine, within
from tests.models import CACHE_DIR, build_tiny_llama
from tests.service_support import events_of

GREEDY_A = ChatOptions(temperature=0.0, max_new_tokens=8, model="tiny-a")
GREEDY_B = ChatOptions(temperature=0.0, max_new_tokens=8, model="tiny-b")


@pytest.fixture(scope="module")
def two_models(tmp_path_factory) -> tuple[LoadedModel, LoadedModel]:
    root = tmp_path_factory.mktemp("two-models")
    return (
        load_model(str(build_tiny_llama(root / "tiny-a", seed=0)), CACHE_DIR),
        load_model(str(build_tiny_llama(root / "tiny-b", seed=1)), CACHE_DIR),
    )


@contextlib.asynccontextmanager
async def two_model_service(repository, a: LoadedModel, b: LoadedModel, tmp_path: Path) -> AsyncIterator[ChatService]:
    async with running_engine(a) as engine_a, running_engine(b) as engine_b:
        models = ServedModels(
            [
                ServedModel("tiny-a", "Tiny A", engine_a, prompt_format(a)),
                ServedModel("tiny-b", "Tiny B", engine_b, prompt_format(b)),
                ServedModel(
                    "tiny-a-warm",
                    "Tiny A, warm",
                    engine_a,
                    prompt_format(a),
                    weights="tiny-a",
                    base="tiny-a",
                    defaults={"temperature": 1.2},
                ),
            ]
        )
        yield ChatService(
            repository,
            engine_a,
            prompt_format(a),
            "tiny-a",
            models=models,
            max_new_tokens=64,
            export_dir=tmp_path,
            journal=Journal(tmp_path / "journal.jsonl"),
        )


@pytest.fixture
async def service(repository, make_user, two_models, tmp_path) -> AsyncIterator[ChatService]:
    await make_user("alice")
    async with two_model_service(repository, *two_models, tmp_path) as service:
        yield service


async def stored(service: ChatService, chat_id: str):
    alice = await service.repository.get_user("alice")
    return await service.repository.get_conversation(alice.id, chat_id)


async def test_each_chat_is_written_by_the_model_it_was_started_with(service):
    first_a = await events_of(service.send("alice", None, "Hello there", GREEDY_A))
    first_b = await events_of(service.send("alice", None, "Hello there", GREEDY_B))
    chat_a, chat_b = first_a[0].conversation_id, first_b[0].conversation_id
    assert (await stored(service, chat_a)).model == "tiny-a"
    assert (await stored(service, chat_b)).model == "tiny-b"
    # different weights, same greedy prompt: different replies, each from its own engine
    assert first_a[-1].text != first_b[-1].text
    engine_a, engine_b = service.models.get("tiny-a").engine, service.models.get("tiny-b").engine
    a_tokens, b_tokens = engine_a.stats().generated_tokens, engine_b.stats().generated_tokens
    # a follow-up without naming a model continues with the chat's own
    await events_of(service.send("alice", chat_b, "And then?", ChatOptions(temperature=0.0, max_new_tokens=8)))
    assert engine_b.stats().generated_tokens > b_tokens
    assert engine_a.stats().generated_tokens == a_tokens


async def test_a_variant_runs_on_its_base_engine_and_keeps_the_stored_ids(service, two_models):
    engine_a = service.models.get("tiny-a").engine
    before = engine_a.stats().generated_tokens
    options = ChatOptions(temperature=0.0, max_new_tokens=8, model="tiny-a-warm")
    events = await events_of(service.send("alice", None, "Hello there", options))
    chat_id = events[0].conversation_id
    assert engine_a.stats().generated_tokens > before  # no engine (no weights) of its own
    assert (await stored(service, chat_id)).model == "tiny-a-warm"
    # continuing the variant's chat on the base model: same weights, so the stored ids are the prompt
    cache_before = engine_a.stats().prefix_cache.reused_tokens
    await events_of(service.send("alice", chat_id, "More", GREEDY_A))
    assert engine_a.stats().prefix_cache.reused_tokens > cache_before


async def test_two_models_serve_at_once_one_blocked_does_not_hold_the_other(
    repository, make_user, two_models, tmp_path
):
    await make_user("alice")
    a = two_models[0]
    fresh_a = load_model(str(Path(a.tokenizer.name_or_path)), CACHE_DIR)  # its own instance for the hook
    async with two_model_service(repository, fresh_a, two_models[1], tmp_path) as service:
        with gate_on(fresh_a.model) as gate:
            gate.close()
            parked = asyncio.ensure_future(events_of(service.send("alice", None, "Hello there", GREEDY_A)))
            await gate.parked()
            # model A is stuck inside a forward pass; model B answers meanwhile
            events = await within(events_of(service.send("alice", None, "Hello there", GREEDY_B)), 60)
            assert events[-1].kind == "done" and not parked.done()
            gate.open()
            assert (await parked)[-1].kind == "done"


async def test_an_unknown_model_is_refused_with_a_sentence_and_nothing_is_stored(service):
    with pytest.raises(UnknownModel) as refused:
        await events_of(service.send("alice", None, "Hello", ChatOptions(max_new_tokens=8, model="gpt-9")))
    assert str(refused.value) == (
        "The server offers no model called 'gpt-9'; choose one of: tiny-a, tiny-b, tiny-a-warm."
    )
    assert await service.list_conversations("alice") == []


async def test_a_model_that_is_down_says_so_and_the_others_keep_serving(service):
    await service.models.get("tiny-b").engine.stop()
    with pytest.raises(Busy) as refused:
        await events_of(service.send("alice", None, "Hello", GREEDY_B))
    assert str(refused.value) == (
        "The model Tiny B is unavailable right now; pick another model or try again in a minute."
    )
    assert await service.list_conversations("alice") == []
    events = await events_of(service.send("alice", None, "Hello", GREEDY_A))
    assert events[-1].kind == "done"


async def test_each_message_records_the_model_and_variant_that_wrote_it(service):
    warm = ChatOptions(system_prompt="Be brief.", temperature=0.0, max_new_tokens=8, model="tiny-a-warm")
    events = await events_of(service.send("alice", None, "Hello there", warm))
    chat = await stored(service, events[0].conversation_id)
    assert [(m.role, m.model, m.variant) for m in chat.messages] == [
        ("system", "tiny-a", "tiny-a-warm"),
        ("user", "tiny-a", "tiny-a-warm"),
        ("assistant", "tiny-a", "tiny-a-warm"),
    ]


async def test_a_chat_continued_with_another_model_is_re_encoded_and_keeps_who_wrote_what(service):
    first = await events_of(service.send("alice", None, "Hello there", GREEDY_B))
    chat_id = first[0].conversation_id
    engine_a = service.models.get("tiny-a").engine
    before = engine_a.stats().generated_tokens
    await events_of(service.send("alice", chat_id, "Now you", GREEDY_A))
    assert engine_a.stats().generated_tokens > before
    chat = await stored(service, chat_id)
    assert chat.model == "tiny-a"  # the chat continues with the model picked for it
    assert [(m.role, m.model) for m in chat.messages] == [
        ("user", "tiny-b"),
        ("assistant", "tiny-b"),
        ("user", "tiny-a"),
        ("assistant", "tiny-a"),
    ]
    # the new turn was encoded by A's tokenizer; B's stored ids stay as they were written
    assert chat.messages[1].token_ids == first[-1].message.token_ids


async def test_an_export_round_trip_keeps_the_model_and_variant_of_every_message(service):
    first = await events_of(service.send("alice", None, "Hello there", GREEDY_B))
    chat_id = first[0].conversation_id
    warm = ChatOptions(temperature=0.0, max_new_tokens=8, model="tiny-a-warm")
    await events_of(service.send("alice", chat_id, "Now warm", warm))
    alice = await service.repository.get_user("alice")
    out = io.StringIO()
    await write_export(service.repository.iter_conversations(alice.id, chat_id), out, "json", include_token_ids=True)
    document = json.loads(out.getvalue())
    exported = [(m["model"], m["variant"]) for m in document["conversations"][0]["messages"]]
    assert exported == [("tiny-b", None)] * 2 + [("tiny-a", "tiny-a-warm")] * 2
    await service.repository.delete_conversation(alice.id, chat_id)
    assert await import_json(service.repository, out.getvalue()) == 1
    restored = await stored(service, chat_id)
    assert [(m.model, m.variant) for m in restored.messages] == exported
