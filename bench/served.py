"""The engine served through the real web server vs the engine alone, same run, same work (issue 24).

For each N in ``--testers`` (default 16,32,64):
(served) a fresh app server (``python -m app serve`` on a free port, its data in a temp
folder, batch size and queue N, sign-up open); N testers sign up and log in with
gradio_client; after one untimed warm-up reply, all N send one message at the same
moment through the page's ``/send`` and read the reply stream to its end;
(alone) ``bench/throughput.py``'s engine run in this process: the same N prompts
(its texts, framed by the chat template as the app frames a new chat), submitted
at once, batch size N, after the same warm-up.

Both decode greedily with the page's repetition penalty. The engine alone is made to
produce exactly ``--new-tokens`` per reply; the app offers no minimum length, so the
served tokens are read back from the stored replies (the details say how many ran to
the limit; the engine's own ``generated_tokens`` count in ``/healthz`` is printed as a
check). Time to first token: served, as the client sees it (from sending to the first
update showing reply text); alone, as the engine sees it (from submit).

CPU, served only, over the measured window, in shares of one core from
``/proc/<pid>/task/<tid>/stat``: the event loop (the main thread) and the engine's
threads (``bench/server_cpu.py`` says how they are told apart), plus any child
process of the server. The clients run in this process, on the same machine: their
share is printed too.

Goals (issue 24): served/alone >= 0.90 at 16 and 32 testers; served tok/s not falling
from 16 to 64; the event loop under 15% of a core at 32. The last line is
``served/alone tok/s: N X.XX, ...``.

    python bench/served.py [--testers 16,32,64] [--new-tokens 64] [--model smollm2]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.config import DEFAULT_MODEL, Settings
from app.engine.fast_linear import pack_linear_layers
from app.engine.loading import LoadedModel, load_model
from app.engine.params import SamplingParams
from bench.server_cpu import CpuShares, shares, snapshot, thread_naming_env
from bench.serving import WARM_UP_TEXT, Reply, ask, sign_up_all, warm_up
from bench.throughput import chat_prompt, describe_machine, percentile, prompt_texts, run_engine
from tests.models import MODEL_CACHE
from tests.page_client import stored
from tests.support import ServerProcess, running_server

# the page sends no repetition penalty, so the engine's default applies; the engine alone uses it too
PAGE_REPETITION_PENALTY = SamplingParams().repetition_penalty
GOAL_RATIO = 0.90
GOAL_RATIO_AT = (16, 32)
GOAL_EVENT_LOOP = 0.15
GOAL_EVENT_LOOP_AT = 32


@dataclass
class Served:
    """One crowd through the app: the replies that arrived, what went wrong, and where the CPU went."""

    testers: int
    replies: list[Reply]
    errors: list[str]
    wall: float
    engine_tokens: int
    cpu: CpuShares
    clients_cpu: float

    @property
    def rate(self) -> float:
        return sum(reply.tokens for reply in self.replies) / self.wall

    def ttft(self, fraction: float) -> float:
        return percentile([reply.ttft for reply in self.replies], fraction) if self.replies else float("nan")


@dataclass
class Alone:
    rate: float
    ttft: list[float]


def served_environment(testers: int, new_tokens: int, naming_folder: Path) -> dict[str, str]:
    """A batch and a queue that hold the whole crowd; no rate limit in the way of one message each."""
    return {
        "CHAT_SIGNUP": "open",
        "CHAT_MAX_BATCH_SIZE": str(testers),
        "CHAT_MAX_QUEUE": str(testers),
        "CHAT_MAX_NEW_TOKENS": str(max(new_tokens, Settings.max_new_tokens)),
        "CHAT_RATE_LIMIT": "1000",
        **thread_naming_env(naming_folder),
    }


def generated_tokens(server: ServerProcess) -> int:
    return int(httpx.get(server.url + "healthz", timeout=30).json()["engine"]["generated_tokens"])


def send_at_once(server: ServerProcess, names: list[str], clients: list, texts: list[str], new_tokens: int) -> Served:
    """Every tester sends one message (a new chat) at the same moment; the CPU is read around exactly that."""
    assert server.process is not None, "the server is started"
    pid = server.process.pid
    start = threading.Barrier(len(clients) + 1)  # this thread is the last to arrive: it takes the snapshots
    engine_before = generated_tokens(server)
    with ThreadPoolExecutor(len(clients)) as pool:
        futures: list[Future] = [pool.submit(ask, client, text, new_tokens, start)
                                 for client, text in zip(clients, texts, strict=True)]
        before, clients_before = snapshot(pid), snapshot(os.getpid())
        start.wait()
        for future in futures:
            future.exception()  # wait for all, failed or not
        after, clients_after = snapshot(pid), snapshot(os.getpid())
    replies, errors, spans = [], [], []
    for name, future in zip(names, futures, strict=True):
        if future.exception() is not None:
            errors.append(f"{name}: {future.exception()}")
            continue
        sent, first, done, conversation_id = future.result()
        spans.append((sent, done))
        reply = stored(server, name, conversation_id).messages[-1]
        if reply.role != "assistant" or not reply.completion_tokens:
            errors.append(f"{name}: reply lost (the chat holds no reply with tokens)")
            continue
        replies.append(Reply(name, first - sent, done - sent, reply.completion_tokens, reply.finish_reason or ""))
    wall = max(done for _, done in spans) - min(sent for sent, _ in spans) if spans else after.at - before.at
    clients_cpu = shares(clients_before, clients_after).process
    return Served(len(clients), replies, errors, wall, generated_tokens(server) - engine_before,
                  shares(before, after), clients_cpu)


def measure_served(model: str, texts: list[str], new_tokens: int) -> Served:
    testers = len(texts)
    with tempfile.TemporaryDirectory(prefix="bench-served-") as folder:
        root = Path(folder)
        (root / "data").mkdir()
        with running_server(root / "data", model, **served_environment(testers, new_tokens, root / "naming")) as server:
            names = [f"tester{index:02d}" for index in range(testers)]
            clients = sign_up_all(server, names)
            warm_up(clients[0])
            return send_at_once(server, names, clients, texts, new_tokens)


def measure_alone(loaded: LoadedModel, texts: list[str], new_tokens: int) -> Alone:
    prompts = [chat_prompt(loaded, text) for text in texts]
    elapsed, ttft, _steps = asyncio.run(run_engine(
        loaded, prompts, [0.0] * len(prompts), new_tokens, len(prompts),
        repetition_penalty=PAGE_REPETITION_PENALTY, warm_up=chat_prompt(loaded, WARM_UP_TEXT),
    ))
    return Alone(len(prompts) * new_tokens / elapsed, ttft)


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def print_table(rows: list[tuple[Served, Alone]], new_tokens: int) -> None:
    print(f"{'N':>3} {'served tok/s':>12} {'alone tok/s':>11} {'ratio':>6} {'TTFT p50/p95 served':>20} "
          f"{'TTFT p50/p95 alone':>19} {'loop %core':>10} {'engine %core':>12} {'errors':>6}")
    for served, alone in rows:
        print(f"{served.testers:>3} {served.rate:12.1f} {alone.rate:11.1f} {served.rate / alone.rate:6.2f} "
              f"{served.ttft(.5):10.2f} /{served.ttft(.95):6.2f} s {percentile(alone.ttft, .5):9.2f} /"
              f"{percentile(alone.ttft, .95):6.2f} s {served.cpu.event_loop:10.0%} {served.cpu.engine:12.0%} "
              f"{len(served.errors):6d}")
    for served, _alone in rows:
        at_limit = sum(reply.tokens == new_tokens for reply in served.replies)
        print(f"  N={served.testers}: {len(served.replies)}/{served.testers} replies, {at_limit} ran to the limit, "
              f"{sum(r.tokens for r in served.replies)} tokens stored, engine counted {served.engine_tokens}, "
              f"{served.wall:.1f} s; {served.cpu.describe()}; clients (this process) {served.clients_cpu:.0%}")
        for error in served.errors[:5]:
            print(f"    error: {error}")


def print_goals(rows: list[tuple[Served, Alone]]) -> None:
    by_testers = {served.testers: (served, alone) for served, alone in rows}
    for testers in GOAL_RATIO_AT:
        if testers in by_testers:
            served, alone = by_testers[testers]
            ratio = served.rate / alone.rate
            print(f"goal served/alone >= {GOAL_RATIO:.2f} at {testers}: {ratio:.2f} {verdict(ratio >= GOAL_RATIO)}")
        else:
            print(f"goal served/alone >= {GOAL_RATIO:.2f} at {testers}: not measured")
    ordered = sorted(by_testers)
    if 16 in by_testers and 64 in by_testers:
        steps = [n for n in ordered if 16 <= n <= 64]
        rates = [by_testers[n][0].rate for n in steps]
        holding = all(later >= earlier for earlier, later in itertools.pairwise(rates))
        print(f"goal served tok/s not falling from 16 to 64: "
              f"{' -> '.join(f'{n} {rate:.1f}' for n, rate in zip(steps, rates, strict=True))} {verdict(holding)}")
    else:
        print("goal served tok/s not falling from 16 to 64: not measured")
    if GOAL_EVENT_LOOP_AT in by_testers:
        loop = by_testers[GOAL_EVENT_LOOP_AT][0].cpu.event_loop
        print(f"goal event loop < {GOAL_EVENT_LOOP:.0%} of a core at {GOAL_EVENT_LOOP_AT}: {loop:.1%} "
              f"{verdict(loop < GOAL_EVENT_LOOP)}")
    else:
        print(f"goal event loop < {GOAL_EVENT_LOOP:.0%} of a core at {GOAL_EVENT_LOOP_AT}: not measured")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--testers", default="16,32,64", help="comma-separated crowd sizes, one server each")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a model name or a local HF folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    crowds = [int(part) for part in args.testers.split(",") if part.strip()]

    settings = Settings.from_env()
    # loaded and packed as the server does it, from the cache the test servers use
    loaded = load_model(args.model, MODEL_CACHE, settings.threads)
    packed = pack_linear_layers(loaded.model, settings.kernels) if settings.fast_kernels else 0
    print(describe_machine())
    print(f"model {loaded.name} ({packed} linears on packed kernels), greedy, repetition penalty "
          f"{PAGE_REPETITION_PENALTY}, {args.new_tokens} new tokens per reply, testers {crowds}")
    rows = []
    for testers in crowds:
        texts = prompt_texts(testers, args.seed)
        served = measure_served(args.model, texts, args.new_tokens)
        alone = measure_alone(loaded, texts, args.new_tokens)
        rows.append((served, alone))
        print(f"  {testers} testers: served {served.rate:.1f} tok/s, alone {alone.rate:.1f} tok/s", flush=True)
    print_table(rows, args.new_tokens)
    print_goals(rows)
    print("served/alone tok/s: " + ", ".join(f"{s.testers} {s.rate / a.rate:.2f}" for s, a in rows))


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
