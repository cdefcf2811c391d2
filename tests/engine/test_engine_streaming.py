"""Streamed text: deltas always add up to the final text, characters are never broken,
and stop strings are never shown."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from functools import cache
from typing import Any

import pytest

from app.engine import LoadedModel, SamplingParams
from app.engine.detokenize import IncrementalDecoder
from tests.engine_support import chat_prompt, collect, decode, generate, greedy, prompt_format, running_engine

HARD_TEXT = "Héllo  wörld, naïve café 🙂👍🏽👨‍👩‍👧 日本語のテキスト 中文 한국어 — “quotes”   and\ttabs\n\nend."
FFFD = "\ufffd"


@cache
def byte_to_symbol() -> dict[int, str]:
    """GPT-2's byte-level alphabet: the vocabulary symbol of each raw byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    symbols = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            symbols.append(256 + extra)
            extra += 1
    return {byte: chr(symbol) for byte, symbol in zip(printable, symbols, strict=True)}


def byte_ids(tokenizer: Any, text: str) -> list[int]:
    """``text`` as one token per UTF-8 byte: every non-ASCII character spans several tokens."""
    ids = [tokenizer.convert_tokens_to_ids(byte_to_symbol()[b]) for b in text.encode()]
    assert tokenizer.unk_token_id not in ids
    return ids


def push_all(tokenizer: Any, ids: Sequence[int]) -> tuple[list[str], IncrementalDecoder]:
    decoder = IncrementalDecoder(tokenizer)
    return [decoder.push(token) for token in ids], decoder


# ---------------------------------------------------------------- the decoder alone


@pytest.mark.parametrize("split", ["tokenizer", "bytes"])
def test_incremental_decoder_rebuilds_hard_text_exactly(smollm2_tokenizer, split):
    tokenizer = smollm2_tokenizer
    if split == "tokenizer":
        ids = tokenizer.encode(HARD_TEXT, add_special_tokens=False)
    else:
        ids = byte_ids(tokenizer, HARD_TEXT)
    assert tokenizer.decode(ids) == HARD_TEXT
    # some tokens are pieces of a character on their own
    assert any(FFFD in tokenizer.decode([token]) for token in ids)
    deltas, decoder = push_all(tokenizer, ids)
    assert "".join(deltas) == HARD_TEXT
    assert not any(FFFD in delta for delta in deltas)
    assert "" in deltas  # held back while a character was incomplete
    assert decoder.full_text() == HARD_TEXT


def test_incremental_decoder_with_a_small_byte_level_vocabulary(tiny_gpt2):
    tokenizer = tiny_gpt2.tokenizer
    ids = tokenizer.encode(HARD_TEXT, add_special_tokens=False)
    assert len(ids) > len(HARD_TEXT)  # mostly single bytes
    deltas, _ = push_all(tokenizer, ids)
    assert "".join(deltas) == HARD_TEXT
    assert not any(FFFD in delta for delta in deltas)


def test_incremental_decoder_skips_special_tokens_and_keeps_spaces(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    words = ["  two spaces", " <|im_start|>", "  then", "\n\n", "  more"]
    ids = [token for word in words for token in tokenizer.encode(word, add_special_tokens=False)]
    deltas, _ = push_all(tokenizer, ids)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True) == "  two spaces   then\n\n  more"


# ---------------------------------------------------------------- through the engine


class ScriptedReply:
    """A forward hook on a test-built model: after a prompt of ``prompt_length`` tokens the
    model's top token is ``tokens[0]``, then ``tokens[1]``, ... (greedy decoding follows it)."""

    def __init__(self, prompt_length: int, tokens: Sequence[int]) -> None:
        self.prompt_length = prompt_length
        self.tokens = list(tokens)

    def hook(self, _module: Any, _args: Any, kwargs: dict[str, Any], output: Any) -> None:
        positions = kwargs["position_ids"][:, -1].tolist()
        for row, position in enumerate(positions):
            index = position - (self.prompt_length - 1)
            if 0 <= index < len(self.tokens):
                output.logits[row, -1].fill_(-1e4)
                output.logits[row, -1, self.tokens[index]] = 1e4


@contextlib.contextmanager
def scripted(loaded: LoadedModel, prompt: Sequence[int], tokens: Sequence[int]) -> Iterator[None]:
    handle = loaded.model.register_forward_hook(ScriptedReply(len(prompt), tokens).hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


async def test_a_reply_full_of_multibyte_characters_streams_whole_characters(fresh_tiny_llama):
    loaded = fresh_tiny_llama
    prompt = chat_prompt(loaded, "emoji please")
    script = [*byte_ids(loaded.tokenizer, HARD_TEXT), 2]
    with scripted(loaded, prompt, script):
        async with running_engine(loaded) as engine:
            deltas, result = await collect(await engine.submit(prompt, greedy(200)))
    assert result.finish_reason == "eos"
    assert result.token_ids == script
    assert "".join(deltas) == result.text == decode(loaded, result.token_ids) == HARD_TEXT
    assert not any(FFFD in delta for delta in deltas)
    assert len(deltas) > 10  # it really streamed


async def test_a_reply_cut_by_length_inside_a_character_ends_like_decode(fresh_tiny_llama):
    loaded = fresh_tiny_llama
    prompt = chat_prompt(loaded, "cut me")
    text = "ok 🙂 fine"
    script = byte_ids(loaded.tokenizer, text)
    cut = len(b"ok ") + 2  # two of the emoji's four bytes
    with scripted(loaded, prompt, script):
        async with running_engine(loaded) as engine:
            deltas, result = await collect(await engine.submit(prompt, greedy(cut)))
    assert result.finish_reason == "length" and result.token_ids == script[:cut]
    assert "".join(deltas) == result.text == decode(loaded, result.token_ids)
    assert result.text.startswith("ok ")
    assert not any(FFFD in delta for delta in deltas[:-1])  # only the unfinished end may show it


async def test_sampled_replies_of_a_random_model_stream_exactly(tiny_llama):
    """Random weights + high temperature: arbitrary tokens, including partial-byte ones."""
    prompt = chat_prompt(tiny_llama, "say anything")
    async with running_engine(tiny_llama, max_batch_size=8, max_queue=32) as engine:
        streams = [
            await engine.submit(prompt, SamplingParams(temperature=1.5, top_p=1.0, top_k=0, max_new_tokens=40, seed=s))
            for s in range(24)
        ]
        outcomes = [await collect(stream) for stream in streams]
    non_ascii = 0
    for deltas, result in outcomes:
        assert result.finish_reason in ("eos", "length")
        assert "".join(deltas) == result.text == decode(tiny_llama, result.token_ids)
        if FFFD not in result.text:
            assert not any(FFFD in delta for delta in deltas)
            non_ascii += any(ord(c) > 127 for c in result.text)
    assert non_ascii > 0


async def test_sampled_bytes_of_a_tiny_vocabulary_stream_exactly(tiny_gpt2):
    prompt = prompt_format(tiny_gpt2).user_turn([], "hello there")
    async with running_engine(tiny_gpt2, max_batch_size=8, max_queue=64) as engine:
        streams = [
            await engine.submit(prompt, SamplingParams(temperature=1.5, top_p=1.0, top_k=0, max_new_tokens=40, seed=s))
            for s in range(48)
        ]
        outcomes = [await collect(stream) for stream in streams]
    for deltas, result in outcomes:
        assert "".join(deltas) == result.text == decode(tiny_gpt2, result.token_ids)
        if FFFD not in result.text:
            assert not any(FFFD in delta for delta in deltas)


# ---------------------------------------------------------------- stop strings


def assert_stopped(deltas: list[str], result, unstopped, stop: str, cut_at: int) -> None:
    assert result.finish_reason == "stop"
    assert result.text == unstopped.text[:cut_at]
    assert "".join(deltas) == result.text
    assert not any(stop in delta for delta in deltas)
    assert stop not in "".join(deltas)
    assert result.token_ids == unstopped.token_ids[: len(result.token_ids)]
    assert result.completion_tokens == len(result.token_ids) < unstopped.completion_tokens


async def test_a_stop_string_from_the_middle_of_a_reply_cuts_it(tiny_llama):
    prompt = chat_prompt(tiny_llama, "a reply to cut")
    async with running_engine(tiny_llama) as engine:
        unstopped = await generate(engine, prompt, greedy(48, min_new_tokens=48))
        text = unstopped.text
        assert len(text) > 40

        def first_new_substring(begin: int, size: int) -> int:
            return next(
                i for i in range(begin, len(text) - size)
                if text.find(text[i : i + size]) == i and FFFD not in text[i : i + size]
            )

        start = first_new_substring(len(text) // 3, 5)
        stop = text[start : start + 5]
        deltas, result = await collect(await engine.submit(prompt, greedy(48, stop=(stop,))))
        assert_stopped(deltas, result, unstopped, stop, start)

        # several stop strings: the earliest occurrence wins, whatever the order given
        later = text[start + 3 : start + 9]
        early = text[(at := first_new_substring(5, 4)) : at + 4]
        assert text.find(early) < min(text.find(later), start)
        deltas, result = await collect(await engine.submit(prompt, greedy(48, stop=(later, early))))
        assert_stopped(deltas, result, unstopped, early, text.find(early))

        # a stop string that never comes: the held-back tail is delivered at the end
        deltas, result = await collect(await engine.submit(prompt, greedy(48, stop=("\x00never\x00" * 3,))))
        assert result.finish_reason == "length"
        assert "".join(deltas) == result.text == text


@pytest.mark.parametrize(
    ("reply", "stop", "expected"),
    [
        ("答えは東京です。次の質問", "。", "答えは東京です"),
        ("emoji 🙂 then STOP here", "STOP", "emoji 🙂 then "),
        ("STOP right away", "STOP", ""),
        ("split across bytes: 日本語 end", "本語", "split across bytes: 日"),
    ],
    ids=["cjk-full-stop", "after-emoji", "at-the-start", "inside-cjk"],
)
async def test_stop_strings_next_to_multibyte_characters(fresh_tiny_llama, reply, stop, expected):
    loaded = fresh_tiny_llama
    prompt = chat_prompt(loaded, "scripted")
    script = [*byte_ids(loaded.tokenizer, reply), 2]
    with scripted(loaded, prompt, script):
        async with running_engine(loaded) as engine:
            deltas, result = await collect(await engine.submit(prompt, greedy(100, stop=(stop,))))
    assert result.finish_reason == "stop"
    assert result.text == expected == "".join(deltas)
    assert not any(stop in delta for delta in deltas)
    assert not any(FFFD in delta for delta in deltas)
    assert result.token_ids == script[: len(result.token_ids)]
    assert decode(loaded, result.token_ids).startswith(expected + stop)


@pytest.mark.slow
async def test_smollm2_stops_before_the_answer(smollm2):
    prompt = chat_prompt(smollm2, "What is the capital of France?")
    async with running_engine(smollm2, max_batch_size=2) as engine:
        unstopped = await generate(engine, prompt, greedy(24))
        assert "Paris" in unstopped.text
        deltas, result = await collect(await engine.submit(prompt, greedy(24, stop=("Paris",))))
    assert_stopped(deltas, result, unstopped, "Paris", unstopped.text.find("Paris"))
