"""The opt-in lossy kernels (``CHAT_KERNELS=bf16``) against the exact fp32 ones, in one run.

Prints, after the CPU and torch's capability:
  (1) a micro-benchmark of one linear at the engine's shapes (SmolLM2-135M's 576x576,
      576->1536, 1536->576 projections and the 49152x576 output head; 1-64 rows):
      the engine's packed fp32 layer, its packed bf16 layer, and dynamic int8
      (``quantize_dynamic``, x86 engine) for comparison, calls interleaved, the
      fastest of many calls each (the machine is shared: minimums are what is stable);
  (2) tokens/s of the engine on fp32 and on bf16 linears, the throughput benchmark's
      shape (16 and 32 requests of 64 greedy tokens, arrivals over the first second),
      the two taken in turns ``--repeats`` times, medians;
  (3) agreement: 100 different prompts, 64 greedy tokens each, on both; the share of
      replies identical to fp32, and where they differ, how many tokens they share first.

    python bench/lossy_kernels.py [--only micro,speed,agree] [--prompts 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import random
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

# not named kernels.py: run as a script, its folder comes first on the path and would shadow the
# ``kernels`` package that transformers imports, for every script in bench/
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.config import Settings
from app.engine.batcher import Engine
from app.engine.fast_linear import PackedBf16Linear, PackedLinear, pack_linear_layers
from app.engine.loading import LoadedModel, load_model
from app.engine.params import SamplingParams
from bench.throughput import TOPICS, chat_prompt, describe_machine, make_prompts, run_engine

SHAPES = [(576, 576), (576, 1536), (1536, 576), (49152, 576)]  # (in, out), as nn.Linear names them
ROWS = [1, 8, 16, 32, 64]
ASKS = [
    "Write a short story about {}.", "Explain {} to a child in three sentences.", "List three facts about {}.",
    "Write a haiku about {}.", "What is the best thing about {}?", "Describe {} to someone who has never seen it.",
    "Give me a riddle whose answer is {}.",
]


# ---------------------------------------------------------------- (1) one linear


def linear_candidates(in_features: int, out_features: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The same random weight as the engine's fp32 and bf16 layers (casts and all) and a dynamic int8 linear."""
    linear = nn.Linear(in_features, out_features, bias=False)
    nn.init.normal_(linear.weight, std=0.05)
    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():  # torch.ao's eager quantization announces its move to torchao
        warnings.simplefilter("ignore")
        int8 = torch.ao.quantization.quantize_dynamic(nn.Sequential(linear), {nn.Linear}, dtype=torch.qint8)
    return {"fp32": PackedLinear(linear), "bf16": PackedBf16Linear(linear), "int8": int8}


def micro(calls: int) -> None:
    print("(1) one linear, fastest of interleaved calls (us); speed-up over fp32; largest error / largest output")
    print("    shape (in->out)  rows     fp32     bf16  speed-up  error      int8-dyn  speed-up  error")
    for in_features, out_features in SHAPES:
        candidates = linear_candidates(in_features, out_features)
        for rows in ROWS:
            x = torch.randn(rows, in_features)
            times: dict[str, list[float]] = {name: [] for name in candidates}
            # the 49152-row head takes ms a call: fewer calls keep the run in minutes
            count = max(10, calls // 10) if out_features > 10_000 else calls
            with torch.inference_mode():
                outputs = {name: f(x) for name, f in candidates.items()}
                for _ in range(count):
                    for name, f in candidates.items():
                        started = time.perf_counter()
                        f(x)
                        times[name].append(time.perf_counter() - started)
            best = {name: min(values) for name, values in times.items()}
            scale = outputs["fp32"].abs().max().item()
            error = {name: (out - outputs["fp32"]).abs().max().item() / scale for name, out in outputs.items()}
            print(f"    {in_features:5d}->{out_features:<5d}  {rows:5d} {best['fp32'] * 1e6:8.0f} "
                  f"{best['bf16'] * 1e6:8.0f}  {best['fp32'] / best['bf16']:7.2f}x  {error['bf16']:.1e}  "
                  f"{best['int8'] * 1e6:11.0f}  {best['fp32'] / best['int8']:7.2f}x  {error['int8']:.1e}", flush=True)


# ---------------------------------------------------------------- (2) tokens/s


def speed(models: dict[str, LoadedModel], requests: list[int], new_tokens: int, repeats: int) -> None:
    print(f"(2) engine tokens/s, {new_tokens} greedy tokens per request, arrivals over the first second, "
          f"fp32 and bf16 in turns, median of {repeats}")
    for count in requests:
        reference = next(iter(models.values()))
        prompts = make_prompts(reference, count, seed=0)
        arrivals = sorted(random.Random(0).uniform(0.0, 1.0) for _ in prompts)
        rates: dict[str, list[float]] = {name: [] for name in models}
        p95: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(repeats):
            for name, loaded in models.items():
                elapsed, ttft, _ = asyncio.run(run_engine(loaded, prompts, arrivals, new_tokens, max_batch_size=count))
                rates[name].append(count * new_tokens / elapsed)
                p95[name].append(sorted(ttft)[round(0.95 * (len(ttft) - 1))])
        fp32, bf16 = statistics.median(rates["fp32"]), statistics.median(rates["bf16"])
        runs = "; ".join(f"{name} " + " ".join(f"{r:.0f}" for r in values) for name, values in rates.items())
        print(f"    {count:3d} requests (batch {count}): fp32 {fp32:6.1f} tok/s, bf16 {bf16:6.1f} tok/s = "
              f"{bf16 / fp32:.2f}x   (TTFT p95 {statistics.median(p95['fp32']):.2f} s vs "
              f"{statistics.median(p95['bf16']):.2f} s; runs: {runs})", flush=True)


# ---------------------------------------------------------------- (3) agreement


def varied_prompts(loaded: LoadedModel, count: int) -> list[list[int]]:
    """``count`` different first messages: every ask about every topic, in a fixed shuffled order."""
    texts = [ask.format(topic) for ask in ASKS for topic in TOPICS]
    random.Random(1).shuffle(texts)
    if count > len(texts):
        raise SystemExit(f"--prompts at most {len(texts)}")
    return [chat_prompt(loaded, text) for text in texts[:count]]


async def replies(loaded: LoadedModel, prompts: list[list[int]], new_tokens: int, batch: int) -> list[list[int]]:
    """Greedy replies of all prompts, served ``batch`` at a time (batching does not change a reply)."""
    engine = Engine(loaded, max_batch_size=batch, max_queue=len(prompts))
    engine.start()
    await engine.wait_ready()
    params = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=new_tokens)
    try:
        streams = [await engine.submit(prompt, params) for prompt in prompts]
        return [(await stream.final()).token_ids for stream in streams]
    finally:
        await engine.stop()


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def agreement(models: dict[str, LoadedModel], count: int, new_tokens: int, batch: int) -> None:
    prompts = varied_prompts(models["fp32"], count)
    answers = {name: asyncio.run(replies(loaded, prompts, new_tokens, batch)) for name, loaded in models.items()}
    pairs = list(zip(answers["fp32"], answers["bf16"], strict=True))
    same = sum(a == b for a, b in pairs)
    prefixes = [common_prefix(a, b) for a, b in pairs if a != b]
    first = sum(bool(a) and bool(b) and a[0] == b[0] for a, b in pairs)
    print(f"(3) agreement over {count} prompts, up to {new_tokens} greedy tokens each: "
          f"{same}/{count} = {same / count:.0%} of bf16 replies identical to fp32; first token equal in "
          f"{first}/{count}", flush=True)
    if prefixes:
        print(f"    where they differ ({len(prefixes)}): common prefix mean {statistics.mean(prefixes):.1f} tokens, "
              f"median {statistics.median(prefixes):.0f}, shortest {min(prefixes)} "
              f"(mean fp32 reply {statistics.mean(len(a) for a, _ in pairs):.1f} tokens)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="micro,speed,agree", help="comma-separated parts to run")
    parser.add_argument("--calls", type=int, default=200, help="calls per candidate in the micro-benchmark")
    parser.add_argument("--requests", default="16,32", help="concurrent requests for the tokens/s part")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=100)
    args = parser.parse_args()
    parts = set(args.only.split(","))
    torch.manual_seed(0)
    print(describe_machine())
    if "micro" in parts:
        micro(args.calls)
    if parts & {"speed", "agree"}:
        settings = Settings.from_env()
        fp32 = load_model(settings.model, settings.cache_dir, settings.threads)
        bf16 = copy.deepcopy(fp32)
        packed = {"fp32": pack_linear_layers(fp32.model, "fp32"), "bf16": pack_linear_layers(bf16.model, "bf16")}
        models = {"fp32": fp32, "bf16": bf16}
        print(f"model {fp32.name}: {packed['fp32']} linears packed fp32, {packed['bf16']} packed bf16")
        if "speed" in parts:
            speed(models, [int(n) for n in args.requests.split(",")], args.new_tokens, args.repeats)
        if "agree" in parts:
            agreement(models, args.prompts, args.new_tokens, batch=32)


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
