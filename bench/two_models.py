"""Two embedded models on the same cores: tokens/s of one alone vs both at once (README, "Several models").

Each model runs as the server runs it with a models file: its own weights in its own
engine process (``ProcessEngine``, the same config ``serve`` builds). Both are SmolLM2
(two copies of the weights, as two checkpoints of one model would be). Per round:
model A alone, then A and B together, each given ``--replies`` greedy replies of
``--new-tokens`` tokens at once (``min_new_tokens`` = the limit, so every reply is that
long). Threads per engine process: ``--threads`` (0: torch's default, every core).

    python bench/two_models.py [--replies 4] [--new-tokens 64] [--rounds 3] [--threads 0]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.config import Settings
from app.engine import PromptFormat, SamplingParams
from app.engine.process_engine import ProcessEngine, engine_process_config
from app.engine.remote_model import load_tokenizer_only

PROMPTS = ["Tell me a long story about a lighthouse."]


async def replies(engine: ProcessEngine, prompt: list[int], count: int, new_tokens: int) -> int:
    """``count`` replies at once; the tokens they generated."""
    params = SamplingParams(temperature=0.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens)

    async def one() -> int:
        stream = await engine.submit(prompt, params)
        async for _ in stream:
            pass
        return len(stream.result.token_ids) if stream.result else 0

    return sum(await asyncio.gather(*(one() for _ in range(count))))


async def timed(*jobs) -> tuple[float, list[int]]:
    started = time.perf_counter()
    counts = await asyncio.gather(*jobs)
    return time.perf_counter() - started, counts


async def main(args: argparse.Namespace) -> None:
    settings = replace(Settings.from_env(), threads=args.threads, max_batch_size=16)
    loaded = load_tokenizer_only("smollm2", settings.cache_dir)
    prompt = PromptFormat(loaded.tokenizer, loaded.eos_token_ids, loaded.context_length).user_turn([], PROMPTS[0])
    engines = [ProcessEngine(engine_process_config(settings)) for _ in range(2)]
    for engine in engines:
        engine.start()
    for engine in engines:
        await engine.wait_ready()
    a, b = engines
    alone, together_a, together_b, together_sum = [], [], [], []
    try:
        await replies(a, prompt, 1, 8)  # warm both
        await replies(b, prompt, 1, 8)
        for _ in range(args.rounds):
            seconds, (tokens,) = await timed(replies(a, prompt, args.replies, args.new_tokens))
            alone.append(tokens / seconds)
            seconds_both, (tokens_a, tokens_b) = await timed(
                replies(a, prompt, args.replies, args.new_tokens), replies(b, prompt, args.replies, args.new_tokens)
            )
            together_a.append(tokens_a / seconds_both)
            together_b.append(tokens_b / seconds_both)
            together_sum.append((tokens_a + tokens_b) / seconds_both)
    finally:
        await asyncio.gather(*(engine.stop() for engine in engines))
    med = statistics.median
    print(
        f"threads per engine: {args.threads or 'torch default'}; {args.replies} replies x {args.new_tokens} tokens "
        f"per model; medians of {args.rounds} rounds"
    )
    print(f"A alone:            {med(alone):7.1f} tokens/s")
    print(f"A with B at once:   {med(together_a):7.1f} tokens/s  (B: {med(together_b):.1f})")
    print(f"both together:      {med(together_sum):7.1f} tokens/s  ({med(together_sum) / med(alone):.2f}x A alone)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replies", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    asyncio.run(main(parser.parse_args()))
