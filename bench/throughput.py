"""Throughput of the tutorial's way vs our continuous-batching engine, same run, same work.

(a) the Gradio chatbot tutorial: one ``model.generate`` per request, one after another;
(b) our engine: all requests submitted as they arrive, served in one running batch.
Both generate exactly ``--new-tokens`` tokens per request (min = max, greedy), prompts
of varied length, arrivals spread over the first second. Prints tokens/s, p50/p95
time to first token, the ratios b/a, and how close (b) runs to the machine's
memory-bandwidth limit. The last line is ``throughput ratio: X.XX``.

    python bench/throughput.py [--requests 16] [--new-tokens 64] [--model smollm2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.config import Settings
from app.engine.batcher import Engine
from app.engine.fast_linear import pack_linear_layers
from app.engine.loading import LoadedModel, load_model
from app.engine.params import SamplingParams

TOPICS = [
    "the sea", "a lighthouse", "coffee", "mountains", "a robot", "autumn", "the moon", "trains",
    "a library", "rain", "chess", "bees", "a bakery", "winter", "a violin", "the desert",
]


def prompt_texts(count: int, seed: int) -> list[str]:
    """Requests of varied length (one to four sentences); ``bench/served.py`` sends the same ones."""
    rng = random.Random(seed)
    texts = []
    for index in range(count):
        topic = TOPICS[index % len(TOPICS)]
        extra = " Please keep it vivid, concrete and friendly." * rng.randint(0, 3)
        texts.append(f"Write a short story about {topic}.{extra}")
    return texts


def make_prompts(loaded: LoadedModel, count: int, seed: int) -> list[list[int]]:
    """Chat-formatted prompts of varied length (one to four sentences of request)."""
    return [chat_prompt(loaded, text) for text in prompt_texts(count, seed)]


def chat_prompt(loaded: LoadedModel, text: str) -> list[int]:
    """A first message as the model's chat template frames it (as the app does for a new chat)."""
    ids = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return list(ids)


def describe_machine() -> str:
    """The CPU and the kernels torch picked for it: figures from two machines differ by these first."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    cpu = names[0] if names else platform.processor() or "unknown CPU"
    return (f"CPU {cpu}, {os.cpu_count()} cores; torch {torch.__version__}, CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class FirstTokenClock:
    """A generate() streamer that notes when the first new token arrives.

    generate() calls ``put`` once with the prompt, then once per new token.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.first_token_at: float | None = None

    def put(self, _value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


def run_sequential(loaded: LoadedModel, prompts: list[list[int]], arrivals: list[float], new_tokens: int):
    """The tutorial's predict(): one generate per request, in arrival order, nothing shared."""
    model, tokenizer = loaded.model, loaded.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(loaded.eos_token_ids)
    first_token_times: list[float] = []
    start = time.perf_counter()
    with torch.inference_mode():
        for prompt, arrival in zip(prompts, arrivals, strict=True):
            wait = start + arrival - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            streamer = FirstTokenClock()
            model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=pad,
                streamer=streamer,
            )
            assert streamer.first_token_at is not None
            first_token_times.append(streamer.first_token_at - (start + arrival))
    elapsed = time.perf_counter() - start
    return elapsed, first_token_times


async def run_engine(loaded: LoadedModel, prompts: list[list[int]], arrivals: list[float], new_tokens: int,
                     max_batch_size: int, *, repetition_penalty: float = 1.0, warm_up: list[int] | None = None):
    """All requests on one engine, each submitted at its arrival; ``warm_up`` is one untimed reply first
    (``bench/served.py`` gives its server one too, so both start with the system prompt in the prefix cache)."""
    engine = Engine(loaded, max_batch_size=max_batch_size, max_queue=len(prompts))
    engine.start()
    await engine.wait_ready()
    params = SamplingParams(
        temperature=0.0, repetition_penalty=repetition_penalty, max_new_tokens=new_tokens, min_new_tokens=new_tokens
    )
    if warm_up:
        await (await engine.submit(warm_up, replace(params, max_new_tokens=8, min_new_tokens=0))).final()
    steps_before = engine.stats().steps
    start = time.perf_counter()

    async def one(prompt: list[int], arrival: float):
        await asyncio.sleep(max(0.0, start + arrival - time.perf_counter()))
        stream = await engine.submit(prompt, params)
        return await stream.final()

    results = await asyncio.gather(*(one(p, a) for p, a in zip(prompts, arrivals, strict=True)))
    elapsed = time.perf_counter() - start
    steps = engine.stats().steps - steps_before
    await engine.stop()
    assert all(r.completion_tokens == new_tokens for r in results), "engine produced a different amount of work"
    return elapsed, [r.time_to_first_token for r in results], steps


def copy_bandwidth() -> float:
    """Bytes per second of a large tensor copy: the ceiling for reading the weights."""
    source = torch.empty(64 * 1024 * 1024, dtype=torch.float32).fill_(1.0)
    target = torch.empty_like(source)
    target.copy_(source)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - started)
    return 2 * source.numel() * source.element_size() / best  # read + write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--model", default=None, help="default: CHAT_MODEL or smollm2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stock-kernels", action="store_true", help="engine without packed oneDNN linears")
    parser.add_argument("--split-gains", action="store_true",
                        help="also run (a) on the packed kernels, to separate batching from kernel gains")
    args = parser.parse_args()

    settings = Settings.from_env()
    loaded = load_model(args.model or settings.model, settings.cache_dir, settings.threads)
    prompts = make_prompts(loaded, args.requests, args.seed)
    rng = random.Random(args.seed)
    arrivals = sorted(rng.uniform(0.0, 1.0) for _ in prompts)
    work = args.requests * args.new_tokens
    print(describe_machine())
    print(f"model {loaded.name}, {torch.get_num_threads()} threads, {args.requests} requests x "
          f"{args.new_tokens} new tokens, prompts {min(map(len, prompts))}-{max(map(len, prompts))} tokens")

    # (a) runs the tutorial's code on the stock model, before our engine touches it
    seq_time, seq_ttft = run_sequential(loaded, prompts, arrivals, args.new_tokens)
    packed = 0 if args.stock_kernels else pack_linear_layers(loaded.model, settings.kernels)
    engine_time, engine_ttft, steps = asyncio.run(
        run_engine(loaded, prompts, arrivals, args.new_tokens, args.max_batch_size)
    )

    seq_tps, engine_tps = work / seq_time, work / engine_time
    print(f"(a) sequential generate: {seq_tps:7.1f} tok/s   TTFT p50 {percentile(seq_ttft, .5):6.2f} s  "
          f"p95 {percentile(seq_ttft, .95):6.2f} s   ({seq_time:.1f} s)")
    print(f"(b) batching engine:     {engine_tps:7.1f} tok/s   TTFT p50 {percentile(engine_ttft, .5):6.2f} s  "
          f"p95 {percentile(engine_ttft, .95):6.2f} s   ({engine_time:.1f} s, {steps} decode steps, "
          f"{packed} linears on packed oneDNN kernels, {settings.kernels})")
    if packed and args.split_gains:
        # how much of (b)/(a) is batching and how much the kernels: (a) again on packed kernels
        kernel_time, _ = run_sequential(loaded, prompts, arrivals, args.new_tokens)
        print(f"(a') sequential generate on the engine's kernels: {work / kernel_time:7.1f} tok/s; "
              f"batching alone gives {kernel_time / engine_time:.2f}x, kernels alone {seq_time / kernel_time:.2f}x")
    unique = {p.data_ptr(): p for p in loaded.model.parameters()}  # tied weights once
    weight_bytes = sum(p.numel() * p.element_size() for p in unique.values())
    bandwidth = copy_bandwidth()
    achieved = weight_bytes * steps / engine_time
    print(f"weights {weight_bytes / 1e6:.0f} MB, copy bandwidth {bandwidth / 1e9:.1f} GB/s: engine reads weights at "
          f"{achieved / 1e9:.1f} GB/s = {achieved / bandwidth:.0%} of the bandwidth limit "
          f"(batching turns each read into {work / max(steps, 1):.1f} tokens)")
    print(f"TTFT p50 ratio (a/b): {percentile(seq_ttft, .5) / max(percentile(engine_ttft, .5), 1e-9):.2f}")
    print(f"TTFT p95 ratio (a/b): {percentile(seq_ttft, .95) / max(percentile(engine_ttft, .95), 1e-9):.2f}")
    print(f"throughput ratio: {engine_tps / seq_tps:.2f}")


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
