"""The generation engine with tiny models built here, and with the real SmolLM2."""

from __future__ import annotations

import asyncio
import copy
import re
import subprocess
import threading

import pytest
import torch

from app.engine import (
    Engine,
    EngineBusy,
    EngineStopped,
    InvalidParams,
    InvalidPrompt,
    ModelLoadError,
    PromptFormat,
    PromptTooLong,
    SamplingParams,
    Turn,
    load_model,
)
from app.engine.detokenize import IncrementalDecoder
from app.engine.fast_linear import PackedLinear, pack_linear_layers
from tests.support import MODEL_CACHE, PYTHON, ROOT, build_tiny_dialogpt, build_tiny_llama, smollm2_folder

GREEDY = dict(temperature=0.0, repetition_penalty=1.0)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return load_model(str(build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))), MODEL_CACHE)


@pytest.fixture(scope="session")
def dialogpt(tmp_path_factory):
    return load_model(str(build_tiny_dialogpt(tmp_path_factory.mktemp("tiny-gpt2"))), MODEL_CACHE)


@pytest.fixture(scope="session")
def smollm2():
    smollm2_folder()
    return load_model("smollm2", MODEL_CACHE)


async def started(loaded, **kwargs) -> Engine:
    engine = Engine(loaded, **kwargs)
    engine.start()
    assert await engine.wait_ready(120)
    return engine


def chat_prompt(loaded, text: str) -> list[int]:
    return PromptFormat(loaded.tokenizer, loaded.eos_token_ids, loaded.context_length).user_turn([], text)


async def run_alone_and_mixed(loaded, prompts: list[list[int]], new_tokens: int):
    engine = await started(loaded, max_batch_size=8)
    params = SamplingParams(max_new_tokens=new_tokens, **GREEDY)
    try:
        alone = []
        for prompt in prompts:
            alone.append(await (await engine.submit(prompt, params)).final())

        async def join_later(prompt, delay):
            await asyncio.sleep(delay)
            return await (await engine.submit(prompt, params)).final()

        mixed = await asyncio.gather(*(join_later(p, 0.05 * i) for i, p in enumerate(prompts)))
    finally:
        await engine.stop()
    return alone, mixed


def reference_generate(loaded, prompt: list[int], new_tokens: int) -> list[int]:
    with torch.inference_mode():
        output = loaded.model.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=new_tokens, do_sample=False, pad_token_id=min(loaded.eos_token_ids),
        )
    return output[0, len(prompt):].tolist()


# ---------------------------------------------------------------- loading


def test_loading_errors_say_what_to_do(tmp_path):
    with pytest.raises(ModelLoadError, match="no model folder"):
        load_model(str(tmp_path / "missing"), MODEL_CACHE)
    with pytest.raises(ModelLoadError, match=r"local cache|--model"):
        load_model("nobody/no-such-model", MODEL_CACHE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load_model(str(tmp_path / "empty"), MODEL_CACHE)


def test_cached_conversion_matches_the_gguf_model(smollm2):
    from transformers import AutoModelForCausalLM

    from app.engine.loading import default_gguf_path

    gguf = default_gguf_path()
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    prompt = chat_prompt(smollm2, "Name three colours.")
    with torch.inference_mode():
        expected = original.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)
    assert reference_generate(smollm2, prompt, 12) == expected[0, len(prompt):].tolist()


# ---------------------------------------------------------------- prompting


def test_chat_template_turns_concatenate_to_the_templates_own_ids(smollm2):
    tokenizer = smollm2.tokenizer
    fmt = PromptFormat(tokenizer, smollm2.eos_token_ids, smollm2.context_length)
    reply = [*tokenizer.encode("Hello! How can I help?", add_special_tokens=False), tokenizer.eos_token_id]
    ids = (fmt.system_turn("Be brief.") + fmt.user_turn([("system", "Be brief.")], "Hi")
           + fmt.assistant_turn(reply)
           + fmt.user_turn([("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello! How can I help?")],
                           "Tell me a joke"))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "Tell me a joke"}]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids == list(expected)
    stopped = fmt.assistant_turn(reply[:-1])
    assert tokenizer.decode(stopped).endswith("<|im_end|>\n")


def test_dialogpt_style_turns_follow_the_tutorial(dialogpt):
    tokenizer = dialogpt.tokenizer
    fmt = PromptFormat(tokenizer, dialogpt.eos_token_ids, dialogpt.context_length)
    eos = tokenizer.eos_token_id
    assert not fmt.uses_chat_template
    assert fmt.user_turn([], "hello there") == tokenizer.encode("hello there" + tokenizer.eos_token)
    assert fmt.assistant_turn([5, 6]) == [5, 6, eos]
    assert fmt.assistant_turn([5, eos]) == [5, eos]


def test_window_drops_oldest_whole_exchanges_at_the_boundary(dialogpt):
    fmt = PromptFormat(dialogpt.tokenizer, dialogpt.eos_token_ids, context_length=30)
    history = [Turn("system", [1] * 4), Turn("user", [2] * 5), Turn("assistant", [3] * 5),
               Turn("user", [4] * 5), Turn("assistant", [5] * 5)]
    new = [6] * 3
    fits = fmt.build_prompt(history, new, max_new_tokens=3)  # 4+20+3 = 27 = 30-3
    assert fits.dropped_turns == 0 and len(fits.token_ids) == 27
    over = fmt.build_prompt(history, new, max_new_tokens=4)
    assert over.dropped_turns == 2
    assert over.token_ids == [1] * 4 + [4] * 5 + [5] * 5 + new
    with pytest.raises(PromptTooLong):
        fmt.build_prompt(history, [7] * 25, max_new_tokens=4)


# ---------------------------------------------------------------- batching


async def test_greedy_tokens_in_a_mixed_batch_equal_tokens_alone(tiny):
    prompts = [chat_prompt(tiny, text) for text in ("Hi", "What is the capital of France, please?",
                                                     "Tell me a long story about a dragon and a knight", "ok")]
    alone, mixed = await run_alone_and_mixed(tiny, prompts, 20)
    for prompt, one, batched in zip(prompts, alone, mixed, strict=True):
        assert batched.token_ids == one.token_ids
        assert one.token_ids == reference_generate(tiny, prompt, 20)[: len(one.token_ids)]


async def test_long_replies_grow_the_cache_and_stay_exact(tiny):
    """Replies longer than the first KV allocation (256 columns) grow the slots mid-batch."""
    prompts = [chat_prompt(tiny, "grow"), chat_prompt(tiny, "grow the cache while others run, please")]
    engine = await started(tiny, max_batch_size=4)
    params = SamplingParams(max_new_tokens=600, min_new_tokens=600, **GREEDY)
    try:
        results = await asyncio.gather(*(engine.submit(p, params) for p in prompts))
        finals = [await stream.final() for stream in results]
    finally:
        await engine.stop()
    for prompt, result in zip(prompts, finals, strict=True):
        assert result.finish_reason == "length" and result.completion_tokens == 600
        with torch.inference_mode():
            expected = tiny.model.generate(
                torch.tensor([prompt]), max_new_tokens=600, min_new_tokens=600, do_sample=False,
                pad_token_id=0, attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            )
        assert result.token_ids == expected[0, len(prompt):].tolist()


async def test_packed_kernels_are_batch_invariant_too(tiny):
    packed = copy.deepcopy(tiny)
    assert pack_linear_layers(packed.model) > 0
    assert any(isinstance(m, PackedLinear) for m in packed.model.modules())
    prompts = [chat_prompt(packed, t) for t in ("a", "a somewhat longer prompt here", "mid length one")]
    alone, mixed = await run_alone_and_mixed(packed, prompts, 16)
    assert [r.token_ids for r in alone] == [r.token_ids for r in mixed]


async def test_dialogpt_model_serves_through_the_engine(dialogpt):
    prompt = PromptFormat(dialogpt.tokenizer, dialogpt.eos_token_ids, dialogpt.context_length).user_turn(
        [], "hello there")
    alone, mixed = await run_alone_and_mixed(dialogpt, [prompt, prompt[:3] + prompt], 12)
    assert alone[0].token_ids == reference_generate(dialogpt, prompt, 12)[: len(alone[0].token_ids)]
    assert [r.token_ids for r in alone] == [r.token_ids for r in mixed]


async def test_real_smollm2_batches_exactly(smollm2):
    prompts = [chat_prompt(smollm2, t) for t in ("What is 2+2?", "Name a fruit.", "Say hello in French.")]
    alone, mixed = await run_alone_and_mixed(smollm2, prompts, 12)
    for prompt, one, batched in zip(prompts, alone, mixed, strict=True):
        assert batched.token_ids == one.token_ids == reference_generate(smollm2, prompt, 12)[: len(one.token_ids)]
        assert one.text.strip()


# ---------------------------------------------------------------- streaming text


def test_incremental_decoder_keeps_multibyte_text_and_spaces(smollm2):
    text = "Héllo  wörld 🙂👍🏽 日本語のテキスト  and   spaces\n\tend."
    decoder = IncrementalDecoder(smollm2.tokenizer)
    deltas = [decoder.push(t) for t in smollm2.tokenizer.encode(text, add_special_tokens=False)]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


async def test_streamed_deltas_add_up_to_the_final_text(tiny):
    engine = await started(tiny)
    try:
        for seed in range(4):
            params = SamplingParams(temperature=1.5, top_p=1.0, top_k=0, max_new_tokens=40, seed=seed)
            stream = await engine.submit(chat_prompt(tiny, "x"), params)
            deltas = [delta async for delta in stream]
            result = stream.result
            assert "".join(deltas) == result.text
            expected = tiny.tokenizer.decode(result.token_ids, skip_special_tokens=True,
                                             clean_up_tokenization_spaces=False)
            assert result.text == expected
            if "\ufffd" not in result.text:
                assert all("\ufffd" not in d for d in deltas)
    finally:
        await engine.stop()


async def test_stop_strings_cut_the_reply_and_are_never_streamed(smollm2):
    engine = await started(smollm2)
    try:
        params = SamplingParams(max_new_tokens=60, stop=("Paris",), **GREEDY)
        stream = await engine.submit(chat_prompt(smollm2, "What is the capital of France?"), params)
        deltas = [d async for d in stream]
        assert stream.result.finish_reason == "stop"
        assert "Paris" not in "".join(deltas) and "Paris" not in stream.result.text
        assert "".join(deltas) == stream.result.text
    finally:
        await engine.stop()


async def test_seeds_and_lengths(tiny):
    engine = await started(tiny)
    try:
        prompt = chat_prompt(tiny, "seeded")

        async def sample(seed):
            params = SamplingParams(temperature=1.0, max_new_tokens=16, min_new_tokens=16, seed=seed)
            return await (await engine.submit(prompt, params)).final()

        first, again, other = await asyncio.gather(sample(1), sample(1), sample(2))
        assert first.token_ids == again.token_ids != other.token_ids
        assert first.completion_tokens == 16 and first.finish_reason == "length"
    finally:
        await engine.stop()


# ---------------------------------------------------------------- refusals, backpressure, cancelling


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-1),
                                 dict(max_new_tokens=0), dict(repetition_penalty=0), dict(stop=("x",) * 9),
                                 dict(seed=-3), dict(temperature="hot")])
def test_invalid_params_name_the_field(bad):
    with pytest.raises(InvalidParams, match=next(iter(bad)).split("_")[0]):
        SamplingParams(**bad)


async def test_bad_prompts_are_refused_before_queueing(tiny):
    engine = await started(tiny)
    try:
        with pytest.raises(InvalidPrompt):
            await engine.submit([], SamplingParams())
        with pytest.raises(InvalidPrompt):
            await engine.submit([10**9], SamplingParams())
        with pytest.raises(PromptTooLong):
            await engine.submit([1] * 2000, SamplingParams(max_new_tokens=100))
        assert engine.stats().waiting == 0
    finally:
        await engine.stop()


async def test_full_queue_says_busy_and_cancelling_frees_slots(tiny):
    engine = await started(tiny, max_batch_size=1, max_queue=2)
    long = SamplingParams(max_new_tokens=1500, min_new_tokens=1500, **GREEDY)
    prompt = chat_prompt(tiny, "go")
    try:
        running = await engine.submit(prompt, long)
        await anext(running)  # it is generating
        waiting = [await engine.submit(prompt, long) for _ in range(2)]
        assert [w.queue_position for w in waiting] == [0, 1]
        with pytest.raises(EngineBusy, match="busy"):
            await engine.submit(prompt, long)
        waiting[0].cancel()
        assert (await waiting[0].final()).finish_reason == "cancelled"
        assert waiting[1].queue_position == 0
        running.cancel()
        result = await running.final()
        assert result.finish_reason == "cancelled" and 0 < result.completion_tokens < 1500
        async for _ in waiting[1]:  # now admitted; leaving the loop early cancels it
            break
        await waiting[1].aclose()
        assert (await waiting[1].final()).finish_reason == "cancelled"
        short = await (await engine.submit(prompt, SamplingParams(max_new_tokens=3, **GREEDY))).final()
        assert short.completion_tokens >= 1
        assert engine.stats().running == 0
    finally:
        await engine.stop()


MAGIC = 4242


async def test_a_failing_batch_fails_only_its_requests(tmp_path):
    loaded = load_model(str(build_tiny_llama(tmp_path / "faulty", seed=1)), MODEL_CACHE)
    fail_decode = threading.Event()
    threads = set()

    def fault(_module, args, kwargs):
        threads.add(threading.current_thread().name)
        input_ids = kwargs.get("input_ids")
        if input_ids is not None and (MAGIC in input_ids.tolist()[0] or fail_decode.is_set()):
            raise RuntimeError("injected fault")

    loaded.model.register_forward_pre_hook(fault, with_kwargs=True)
    engine = await started(loaded, max_batch_size=4)
    try:
        healthy = await engine.submit(chat_prompt(loaded, "fine"), SamplingParams(max_new_tokens=30, **GREEDY))
        await anext(healthy)
        broken = await (await engine.submit([MAGIC, 5, 6], SamplingParams(max_new_tokens=5))).final()
        assert broken.finish_reason == "error" and "injected fault" in broken.error
        assert (await healthy.final()).finish_reason in ("eos", "length")

        victim = await engine.submit(chat_prompt(loaded, "decode"), SamplingParams(max_new_tokens=200, **GREEDY))
        await anext(victim)
        fail_decode.set()
        assert (await victim.final()).finish_reason == "error"
        fail_decode.clear()
        after = await (await engine.submit(chat_prompt(loaded, "again"), SamplingParams(max_new_tokens=4))).final()
        assert after.finish_reason in ("eos", "length") and after.error is None
    finally:
        await engine.stop()
    assert threads == {"generation-worker"}


async def test_shutdown_cancels_in_flight_work_and_refuses_new(tiny):
    engine = await started(tiny, max_batch_size=1)
    long = SamplingParams(max_new_tokens=1500, min_new_tokens=1500, **GREEDY)
    running = await engine.submit(chat_prompt(tiny, "a"), long)
    queued = await engine.submit(chat_prompt(tiny, "b"), long)
    await anext(running)
    await engine.stop(grace_seconds=0)
    assert (await running.final()).finish_reason == "cancelled"
    assert (await queued.final()).finish_reason == "cancelled"
    assert not engine.stats().alive
    with pytest.raises(EngineStopped):
        await engine.submit(chat_prompt(tiny, "c"), SamplingParams())


def test_benchmark_script_prints_its_ratio(tmp_path):
    model = build_tiny_llama(tmp_path / "bench-model")
    result = subprocess.run(
        [PYTHON, "bench/throughput.py", "--model", str(model), "--requests", "4", "--new-tokens", "8"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "CHAT_DATA_DIR": str(tmp_path), "CHAT_CACHE_DIR": str(MODEL_CACHE)},
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"throughput ratio: \d+\.\d\d", result.stdout.strip().splitlines()[-1])
