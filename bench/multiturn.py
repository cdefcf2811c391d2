"""Multi-turn chats on the engine: prefix cache, chunked prefill, and batching against a static batch.

Prints, in one run on the default model (ratios are what to read; absolute times
move with the machine's load):
  (1) second-turn time to first token on a chat with ~1,000 tokens of history vs a
      fresh ~40-token prompt, with the prefix cache and without it (goal: <= 2x with);
  (2) 8 streaming replies while a 3,000-token prompt is admitted: their mean and worst
      gap between tokens vs their steady gap before it came (goals at the default
      CHAT_PREFILL_SHARE: mean <= 2.0x, worst <= 2.5x), and the long prompt's time to
      first token vs alone (goal <= 2.2x), at three prompt shares (engines without
      mixed steps: at prefill chunk sizes instead);
  (3) tokens/s of the engine vs padded ``model.generate`` on the same packed
      kernels, 16 requests present at once (goal: >= 1.0x);
  (4) a simulated day: 16 users each holding a 10-turn chat with think time between
      turns; mean and p95 time to first token per turn number, with and without the cache.
``bench/throughput.py`` at 16 and 32 users is the fifth figure (``make bench`` runs both).

    python bench/multiturn.py [--only ttft,stall,static,day] [--day-turns 10]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.config import Settings
from app.engine.batcher import PREFILL_CHUNK, Engine, GenerationResult
from app.engine.fast_linear import pack_linear_layers
from app.engine.loading import LoadedModel, load_model
from app.engine.params import SamplingParams
from app.engine.prompting import PromptFormat, Turn
from bench.batching_options import padded_generate
from bench.throughput import describe_machine, make_prompts, percentile

try:  # engines before issue 21 had no prompt share (the bench also runs against them for comparison)
    from app.engine.batch_settings import DEFAULT_PREFILL_SHARE
except ImportError:
    DEFAULT_PREFILL_SHARE = None

STREAM_TOKENS = 3000
WORDS = [
    "the", "report", "river", "engine", "garden", "market", "window", "signal", "summer", "letter", "island",
    "method", "picture", "station", "theory", "number", "battery", "forest", "kitchen", "orbit", "paper",
    "memory", "harbor", "circuit", "voice", "meadow", "ladder", "planet", "record", "thunder", "silver",
    "canyon", "folder", "rocket", "pepper", "lantern", "bridge", "mirror",
]


def prose(rng: random.Random, words: int) -> str:
    """Plausible-looking text of about ``words`` words (a pasted document, a long question)."""
    sentences, count = [], 0
    while count < words:
        length = rng.randint(6, 14)
        sentence = " ".join(rng.choice(WORDS) for _ in range(length))
        sentences.append(sentence.capitalize() + ".")
        count += length
    return " ".join(sentences)


def greedy(new_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens)


@dataclass
class Chat:
    """A conversation kept as ChatService keeps it: each turn's token ids, the prompt their concatenation."""

    form: PromptFormat
    turns: list[Turn] = field(default_factory=list)
    texts: list[tuple[str, str]] = field(default_factory=list)
    pending: tuple[str, list[int]] | None = None

    def prompt(self, text: str, max_new_tokens: int) -> list[int]:
        new_turn = self.form.user_turn(self.texts, text)
        self.pending = (text, new_turn)
        return self.form.build_prompt(self.turns, new_turn, max_new_tokens).token_ids

    def record(self, result: GenerationResult) -> None:
        assert self.pending is not None
        text, new_turn = self.pending
        self.turns += [Turn("user", new_turn), Turn("assistant", self.form.assistant_turn(result.token_ids))]
        self.texts += [("user", text), ("assistant", result.text)]
        self.pending = None

    @property
    def length(self) -> int:
        return sum(len(turn.token_ids) for turn in self.turns)


async def started_engine(loaded: LoadedModel, **options) -> Engine:
    engine = Engine(loaded, **options)
    engine.start()
    await engine.wait_ready()
    return engine


async def ask(engine: Engine, chat: Chat, text: str, new_tokens: int) -> GenerationResult:
    stream = await engine.submit(chat.prompt(text, new_tokens), greedy(new_tokens))
    result = await stream.final()
    chat.record(result)
    return result


# ---------------------------------------------------------------- (1) second turn


async def second_turn_ttft(loaded: LoadedModel, form: PromptFormat, cache_mb: float, rng: random.Random):
    """Median TTFT of a fresh short prompt and of the second turn of ~1,000-token chats."""
    engine = await started_engine(loaded, max_batch_size=4, prefix_cache_mb=cache_mb)
    fresh, second, history = [], [], []
    try:
        for _ in range(3):
            fresh_chat = Chat(form)
            fresh.append((await ask(engine, fresh_chat, prose(rng, 28), 8)).time_to_first_token)
            chat = Chat(form)
            await ask(engine, chat, prose(rng, 810), 48)  # turn 1: ~1,000 tokens of question + reply
            history.append(chat.length)
            result = await ask(engine, chat, prose(rng, 28), 8)
            second.append(result.time_to_first_token)
    finally:
        await engine.stop()
    return statistics.median(fresh), statistics.median(second), statistics.median(history)


# ---------------------------------------------------------------- (2) stall


async def long_prompt_alone(loaded: LoadedModel, long_prompt: list[int], pacing: dict) -> float:
    engine = await started_engine(loaded, max_batch_size=16, prefix_cache_mb=0, **pacing)
    try:
        result = await (await engine.submit(long_prompt, greedy(4))).final()
    finally:
        await engine.stop()
    return result.time_to_first_token or 0.0


async def stall(loaded: LoadedModel, form: PromptFormat, pacing: dict, rng: random.Random):
    """Gaps between tokens of 8 streams while a 3,000-token prompt is admitted, vs their steady gap."""
    engine = await started_engine(loaded, max_batch_size=16, prefix_cache_mb=0, **pacing)
    arrivals: list[list[float]] = [[] for _ in range(8)]

    async def stream_one(index: int, prompt: list[int]) -> None:
        # long enough to outlast the long prompt on a loaded machine (they are cancelled once it is in)
        stream = await engine.submit(prompt, greedy(STREAM_TOKENS))
        async for _ in stream:
            arrivals[index].append(time.perf_counter())

    try:
        prompts = [Chat(form).prompt(prose(rng, 25), STREAM_TOKENS) for _ in range(8)]
        # tokenized before the streams start: tokenizing on this loop would pause our own clock
        long_prompt = Chat(form).prompt(prose(rng, 2350), 16)
        tasks = [asyncio.create_task(stream_one(i, p)) for i, p in enumerate(prompts)]
        while min(len(a) for a in arrivals) < 20:  # noqa: ASYNC110 (polling a plain list is the point)
            await asyncio.sleep(0.01)
        submitted = time.perf_counter()
        long_stream = await engine.submit(long_prompt, greedy(4))
        long_result = await long_stream.final()
        admitted = submitted + (long_result.time_to_first_token or 0.0)
        for stream_task in tasks:
            stream_task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await engine.stop()
    before = [b - a for times in arrivals for a, b in itertools.pairwise(times) if b < submitted]
    during = [b - a for times in arrivals for a, b in itertools.pairwise(times)
              if b > submitted and a < admitted]
    # after the join every row attends over the long prompt's keys: slower steps, not a pause
    after = [b - a for times in arrivals for a, b in itertools.pairwise(times) if a > admitted]
    alone = await long_prompt_alone(loaded, long_prompt, pacing)
    return {
        "steady": statistics.median(before), "mean": statistics.mean(during), "worst": max(during),
        "admit": admitted - submitted, "alone": alone, "length": len(long_prompt), "after": statistics.median(after),
    }


# ---------------------------------------------------------------- (3) static batch


def engine_all_at_once(loaded: LoadedModel, prompts: list[list[int]], new_tokens: int) -> float:
    async def run() -> float:
        engine = await started_engine(loaded, max_batch_size=len(prompts), max_queue=len(prompts))
        try:
            started = time.perf_counter()
            streams = [await engine.submit(p, greedy(new_tokens)) for p in prompts]
            results = [await s.final() for s in streams]
            elapsed = time.perf_counter() - started
        finally:
            await engine.stop()
        return sum(r.completion_tokens for r in results) / elapsed

    return asyncio.run(run())


# ---------------------------------------------------------------- (4) a day of chats


async def simulated_day(loaded: LoadedModel, form: PromptFormat, cache_mb: float, users: int, turns: int,
                        seed: int) -> dict[int, list[float]]:
    """``users`` testers, each a ``turns``-turn chat, 0.5-2 s of think time between turns."""
    engine = await started_engine(loaded, max_batch_size=16, max_queue=64, prefix_cache_mb=cache_mb)
    ttft: dict[int, list[float]] = {turn: [] for turn in range(1, turns + 1)}

    async def tester(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        chat = Chat(form)
        await asyncio.sleep(rng.uniform(0.0, 1.0))
        for turn in range(1, turns + 1):
            result = await ask(engine, chat, prose(rng, rng.randint(12, 40)), 32)
            ttft[turn].append(result.time_to_first_token or 0.0)
            await asyncio.sleep(rng.uniform(0.5, 2.0))

    try:
        await asyncio.gather(*(tester(i) for i in range(users)))
    finally:
        await engine.stop()
    return ttft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="ttft,stall,static,day", help="comma-separated parts to run")
    parser.add_argument("--chunks", default="32,64,128,256", help="prefill chunk sizes (engines without mixed steps)")
    parser.add_argument("--shares", default="0.33,0.5,0.67", help="CHAT_PREFILL_SHARE values for the stall part")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side of the static comparison")
    parser.add_argument("--day-users", type=int, default=16)
    parser.add_argument("--day-turns", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    parts = set(args.only.split(","))
    settings = Settings.from_env()
    loaded = load_model(settings.model, settings.cache_dir, settings.threads)
    packed = pack_linear_layers(loaded.model, settings.kernels)
    form = PromptFormat(loaded.tokenizer, loaded.eos_token_ids, loaded.context_length)
    rng = random.Random(args.seed)
    print(describe_machine())
    print(f"model {loaded.name}, {torch.get_num_threads()} threads, {packed} linears on packed "
          f"{settings.kernels} kernels, default prefill chunk {PREFILL_CHUNK}")

    if "ttft" in parts:
        fresh, hit, history = asyncio.run(second_turn_ttft(loaded, form, 2048, rng))
        fresh_off, miss, _ = asyncio.run(second_turn_ttft(loaded, form, 0, rng))
        print(f"(1) TTFT of a fresh ~40-token prompt {fresh:.3f} s; second turn of a {history:.0f}-token chat: "
              f"{hit:.3f} s with the prefix cache ({hit / fresh:.2f}x of fresh, goal <= 2x), "
              f"{miss:.3f} s without ({miss / fresh_off:.2f}x); the cache makes it {miss / hit:.1f}x faster")

    if "stall" in parts:
        if DEFAULT_PREFILL_SHARE is None:
            settings_tried = [({"prefill_chunk": int(c)}, f"chunk {int(c):4d}", int(c) == PREFILL_CHUNK)
                              for c in args.chunks.split(",")]
        else:
            settings_tried = [({"prefill_share": float(v)}, f"share {float(v):.2f}",
                               float(v) == DEFAULT_PREFILL_SHARE) for v in args.shares.split(",")]
        for pacing, label, default in settings_tried:
            f = asyncio.run(stall(loaded, form, pacing, rng))
            steady = f["steady"]
            print(f"(2) {label}: 8 streams, steady gap {steady * 1000:4.0f} ms; while a {f['length']}-token prompt "
                  f"is admitted: mean gap {f['mean'] * 1000:4.0f} ms = {f['mean'] / steady:.2f}x (goal <= 2.0x), "
                  f"worst {f['worst'] * 1000:4.0f} ms = {f['worst'] / steady:.2f}x (goal <= 2.5x); its TTFT "
                  f"{f['admit']:.1f} s vs {f['alone']:.1f} s alone = {f['admit'] / f['alone']:.2f}x (goal <= 2.2x); "
                  f"gap once it runs with them {f['after'] * 1000:.0f} ms{'  <- default' if default else ''}")

    if "static" in parts:
        prompts = make_prompts(loaded, 16, seed=args.seed)
        engine_rates, padded_rates = [], []
        for _ in range(args.repeats):  # alternate, so load drift hits both alike
            padded_rates.append(padded_generate(loaded, prompts, 64))
            engine_rates.append(engine_all_at_once(loaded, prompts, 64))
        engine_rate, padded_rate = statistics.median(engine_rates), statistics.median(padded_rates)
        print(f"(3) 16 requests at once, 64 tokens each: engine {engine_rate:.0f} tok/s, padded generate on the "
              f"same kernels {padded_rate:.0f} tok/s: {engine_rate / padded_rate:.2f}x (goal >= 1.2x)")

    if "day" in parts:
        results = {}
        for label, cache_mb in (("with cache", 2048), ("no cache", 0)):
            results[label] = asyncio.run(
                simulated_day(loaded, form, cache_mb, args.day_users, args.day_turns, args.seed)
            )
        print(f"(4) a simulated day: {args.day_users} users x {args.day_turns} turns, TTFT per turn (s)")
        print("    turn   with cache: mean    p95    no cache: mean    p95")
        for turn in range(1, args.day_turns + 1):
            hit, miss = results["with cache"][turn], results["no cache"][turn]
            print(f"    {turn:4d}   {statistics.mean(hit):16.2f} {percentile(hit, .95):6.2f}   "
                  f"{statistics.mean(miss):14.2f} {percentile(miss, .95):6.2f}")
        all_hit = [t for values in results["with cache"].values() for t in values]
        all_miss = [t for values in results["no cache"].values() for t in values]
        hit_mean, miss_mean = statistics.mean(all_hit), statistics.mean(all_miss)
        print(f"    all turns: mean {hit_mean:.2f} s with the cache vs {miss_mean:.2f} s without "
              f"({miss_mean / hit_mean:.1f}x)")


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
