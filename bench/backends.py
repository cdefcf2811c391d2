"""The same 16-user workload through the app, on (a) the embedded engine and (b) a llama.cpp server.

Each backend gets a fresh app server process (``python -m app serve`` on the default
SmolLM2, its data in a temp folder, sign-up open). Sixteen users sign up over HTTP and
log in with gradio_client; after one untimed warm-up reply, all sixteen send one
message at the same moment through ``/send`` and read the reply stream. Both apps stay
up and take turns for ``--rounds`` rounds each (a b, b a, a b): on a machine shared with
other work the load then drifts over both alike; the table gives the medians of the
rounds. For (b) the app runs with ``CHAT_ENGINE_URL`` + ``CHAT_ENGINE_PROTOCOL=llamacpp`` against
``llama-server`` serving the default model's GGUF (16 slots), built by
``scripts/build_llama_server.sh`` (``make llama-server``).

Greedy (temperature 0, the page's repetition penalty), ``--new-tokens`` per reply: the
app offers no minimum length and the llama.cpp protocol refuses one, so the prompts ask
for long stories and the tokens actually produced are read back from the stored
messages (the table says how many replies ran to the limit). Time to first token is as
the client sees it: from submitting to the first update that shows reply text.
llama.cpp runs the GGUF's Q4_1 weights, the embedded engine their float32 copy: the
same model, not the same arithmetic, so the replies differ.

Prints a table; the last line is ``backend ratio (llamacpp/embedded tokens/s): X.XX``.

    python bench/backends.py [--users 16] [--new-tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.serving import Reply, ask, sign_up_all, warm_up
from bench.throughput import TOPICS, percentile
from tests.llama_support import LlamaServer, llama_server_binary
from tests.page_client import stored
from tests.support import ServerProcess, running_server


@dataclass
class Outcome:
    label: str
    replies: list[Reply]
    wall: float

    @property
    def tokens(self) -> int:
        return sum(reply.tokens for reply in self.replies)

    @property
    def total_rate(self) -> float:
        return self.tokens / self.wall

    @property
    def per_user_rate(self) -> float:
        return statistics.mean(reply.tokens / reply.seconds for reply in self.replies)

    def ttft(self, fraction: float) -> float:
        return percentile([reply.ttft for reply in self.replies], fraction)


@dataclass
class Backend:
    """An app server on one backend with its testers signed up and logged in."""

    label: str
    server: ServerProcess
    names: list[str]
    clients: list


def prepare(label: str, server: ServerProcess, users: int) -> Backend:
    names = [f"bench{index:02d}" for index in range(users)]
    clients = sign_up_all(server, names)
    warm_up(clients[0])  # first-request costs of either backend
    return Backend(label, server, names, clients)


def run_round(backend: Backend, new_tokens: int) -> Outcome:
    """Every tester sends one message (a new chat) at the same moment and reads the reply to its end."""
    users = len(backend.clients)
    barrier = threading.Barrier(users)
    with ThreadPoolExecutor(users) as pool:
        answers = list(pool.map(
            lambda i: ask(backend.clients[i], f"Write a long story about {TOPICS[i % len(TOPICS)]}.", new_tokens,
                          barrier),
            range(users),
        ))
    replies = []
    for name, (sent, first, done, conversation_id) in zip(backend.names, answers, strict=True):
        reply = stored(backend.server, name, conversation_id).messages[-1]
        if reply.role != "assistant":
            raise RuntimeError(f"{backend.label}: {name}'s chat holds no reply")
        replies.append(Reply(name, first - sent, done - sent, reply.completion_tokens, reply.finish_reason or ""))
    wall = max(answer[2] for answer in answers) - min(answer[0] for answer in answers)
    return Outcome(backend.label, replies, wall)


@dataclass
class Summary:
    """A backend's rounds: the median of each figure over the rounds."""

    label: str
    rounds: list[Outcome]

    def median(self, figure) -> float:
        return statistics.median(figure(outcome) for outcome in self.rounds)

    @property
    def total_rate(self) -> float:
        return self.median(lambda o: o.total_rate)

    @property
    def per_user_rate(self) -> float:
        return self.median(lambda o: o.per_user_rate)

    def ttft(self, fraction: float) -> float:
        return self.median(lambda o: o.ttft(fraction))

    def row(self, new_tokens: int) -> str:
        replies = [reply for outcome in self.rounds for reply in outcome.replies]
        at_limit = sum(reply.tokens == new_tokens for reply in replies)
        return (f"{self.label:<22} {self.total_rate:9.1f} {self.per_user_rate:10.2f} {self.ttft(.5):8.2f} "
                f"{self.ttft(.95):8.2f} {self.median(lambda o: o.wall):7.1f} "
                f"{sum(reply.tokens for reply in replies):6d} {at_limit:4d}/{len(replies)}")


def app_environment(engine_url: str | None) -> dict[str, str]:
    env = {"CHAT_SIGNUP": "open", "CHAT_MAX_NEW_TOKENS": "1024", "CHAT_RATE_LIMIT": "1000"}
    if engine_url:
        env.update(CHAT_ENGINE_URL=engine_url, CHAT_ENGINE_PROTOCOL="llamacpp")
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per backend, alternated a b, b a, a b, ...")
    args = parser.parse_args()
    try:
        binary = llama_server_binary()
    except pytest.skip.Exception as reason:  # cannot be built here: say why, as the tests do
        raise SystemExit(f"bench/backends.py needs llama-server: {reason}") from None

    with tempfile.TemporaryDirectory(prefix="bench-backends-") as folder, ExitStack() as stack:
        root = Path(folder)
        for name in ("embedded", "llama", "remote"):
            (root / name).mkdir()
        # both apps stay up and take turns, so the load other work puts on the machine hits both alike
        llama = LlamaServer(binary, root / "llama", parallel=args.users, context=args.users * 1024).start()
        stack.callback(llama.kill)
        local = stack.enter_context(running_server(root / "embedded", "smollm2", **app_environment(None)))
        remote = stack.enter_context(running_server(root / "remote", "smollm2", **app_environment(llama.url)))
        backends = [prepare("(a) embedded engine", local, args.users),
                    prepare("(b) llama.cpp server", remote, args.users)]
        rounds: dict[str, list[Outcome]] = {backend.label: [] for backend in backends}
        for number in range(args.rounds):
            for backend in backends if number % 2 == 0 else backends[::-1]:
                outcome = run_round(backend, args.new_tokens)
                rounds[backend.label].append(outcome)
                print(f"  round {number + 1} {backend.label}: {outcome.total_rate:6.1f} tok/s, TTFT p50 "
                      f"{outcome.ttft(.5):.2f} s, p95 {outcome.ttft(.95):.2f} s", flush=True)

    embedded, server = (Summary(label, outcomes) for label, outcomes in rounds.items())
    print(f"{args.users} users through the app, one message each sent at once, greedy, {args.new_tokens} new "
          f"tokens asked per reply, median of {args.rounds} rounds (SmolLM2-135M: (a) float32, (b) GGUF Q4_1, "
          f"{args.users} slots)")
    print(f"{'backend':<22} {'tok/s':>9} {'user tok/s':>10} {'TTFT p50':>8} {'TTFT p95':>8} {'wall s':>7} "
          f"{'tokens':>6} {'at limit':>9}")
    for summary in (embedded, server):
        print(summary.row(args.new_tokens))
    print(f"{'ratio (b)/(a)':<22} {server.total_rate / embedded.total_rate:9.2f} "
          f"{server.per_user_rate / embedded.per_user_rate:10.2f} {server.ttft(.5) / embedded.ttft(.5):8.2f} "
          f"{server.ttft(.95) / embedded.ttft(.95):8.2f}")
    reasons = {s.label: sorted({r.finish_reason for o in s.rounds for r in o.replies}) for s in (embedded, server)}
    print("finish reasons: " + "; ".join(f"{label} {', '.join(found)}" for label, found in reasons.items()))
    print(f"backend ratio (llamacpp/embedded tokens/s): {server.total_rate / embedded.total_rate:.2f}")


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
