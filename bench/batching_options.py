"""Which batching to build on: padded generate, transformers' continuous batching, or ours.

All three run the same 16 prompts, 64 new tokens each, all present at once (no
arrival spread, so this measures pure batched throughput), in one process:
  (1) ``model.generate`` on one left-padded batch of 16,
  (2) transformers' own continuous batching (``model.generate_batch``, paged cache),
  (3) our engine (``app/engine``), stock kernels and packed oneDNN kernels.
Prints tokens/s for each and the ratios against (1).

    python bench/batching_options.py [--requests 16] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.config import Settings
from app.engine.batcher import Engine
from app.engine.fast_linear import pack_linear_layers
from app.engine.loading import LoadedModel, load_model
from app.engine.params import SamplingParams
from bench.throughput import make_prompts


def padded_generate(loaded: LoadedModel, prompts: list[list[int]], new_tokens: int) -> float:
    width = max(map(len, prompts))
    pad = min(loaded.eos_token_ids)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    started = time.perf_counter()
    with torch.inference_mode():
        loaded.model.generate(input_ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              do_sample=False, pad_token_id=pad)
    return len(prompts) * new_tokens / (time.perf_counter() - started)


def transformers_continuous_batching(loaded: LoadedModel, prompts: list[list[int]], new_tokens: int) -> float | str:
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              eos_token_id=-1, pad_token_id=min(loaded.eos_token_ids),
                              num_blocks=256, block_size=32, max_batch_tokens=512)
    try:
        started = time.perf_counter()
        # no inference_mode here: the manager runs its own thread, which inference tensors would break
        outputs = loaded.model.generate_batch(inputs=prompts, generation_config=config, progress_bar=False)
        elapsed = time.perf_counter() - started
    except Exception as error:  # an API that changed under us is a result too
        return f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    produced = sum(len(getattr(o, "generated_tokens", []) or []) for o in outputs.values())
    if produced == 0:
        return "failed: no tokens generated"
    return produced / elapsed


def our_engine(loaded: LoadedModel, prompts: list[list[int]], new_tokens: int) -> float:
    async def run() -> float:
        engine = Engine(loaded, max_batch_size=len(prompts), max_queue=len(prompts))
        engine.start()
        await engine.wait_ready()
        params = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens)
        started = time.perf_counter()
        streams = [await engine.submit(p, params) for p in prompts]
        results = [await s.final() for s in streams]
        elapsed = time.perf_counter() - started
        await engine.stop()
        return sum(r.completion_tokens for r in results) / elapsed

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    settings = Settings.from_env()
    loaded = load_model(settings.model, settings.cache_dir, settings.threads)
    prompts = make_prompts(loaded, args.requests, seed=0)

    padded = padded_generate(loaded, prompts, args.new_tokens)
    print(f"(1) padded model.generate, batch {args.requests}: {padded:7.1f} tok/s")
    stock = our_engine(loaded, prompts, args.new_tokens)
    print(f"(3) our engine, stock kernels:          {stock:7.1f} tok/s  ({stock / padded:.2f}x of (1))")
    builtin = transformers_continuous_batching(loaded, prompts, args.new_tokens)
    if isinstance(builtin, float):
        print(f"(2) transformers generate_batch:        {builtin:7.1f} tok/s  ({builtin / padded:.2f}x of (1))")
    else:
        print(f"(2) transformers generate_batch:        {builtin}")
    pack_linear_layers(loaded.model)
    packed = our_engine(loaded, prompts, args.new_tokens)
    print(f"(3) our engine, packed oneDNN kernels:  {packed:7.1f} tok/s  ({packed / padded:.2f}x of (1))")
    padded_packed = padded_generate(loaded, prompts, args.new_tokens)
    print(f"(1') padded model.generate on packed kernels: {padded_packed:7.1f} tok/s")


if __name__ == "__main__":
    main()
