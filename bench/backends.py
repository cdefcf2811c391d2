"""The same 16-user workload through the app, on (a) the embedded engine and (b) a llama.cpp server.

Each backend gets a fresh app server process (``python -m app serve`` on the default
SmolLM2, its data in a temp folder, sign-up open). Sixteen users sign up over HTTP and
log in with gradio_client; after one untimed warm-up reply, all sixteen send one
message at the same moment through ``/send`` and read the reply stream. For (b) the
app runs with ``CHAT_ENGINE_URL`` + ``CHAT_ENGINE_PROTOCOL=llamacpp`` against
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

    python bench/backends.py [--users 16] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.throughput import TOPICS, percentile
from tests.llama_support import LlamaServer, llama_server_binary
from tests.support import ServerProcess, api_client, running_server
from tests.test_server import bubble_texts, stored

PASSWORD = "bench-password-123"


@dataclass
class Reply:
    """One user's reply as the client saw it and as the app stored it."""

    username: str
    ttft: float
    seconds: float
    tokens: int
    finish_reason: str


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


def sign_up(server: ServerProcess, username: str):
    """Sign up over HTTP as a new tester would, then log in with gradio_client."""
    response = httpx.post(server.url + "signup", data={"username": username, "password": PASSWORD}, timeout=30)
    if response.status_code != 303:
        raise RuntimeError(f"sign-up of {username} failed: {response.status_code} {response.text[:200]}")
    return api_client(server.url, username, PASSWORD)


def ask(client, text: str, new_tokens: int, start: threading.Barrier | None = None):
    """Send one message, read the stream; returns when it was sent, first showed reply text, ended; the chat id."""
    if start is not None:
        start.wait()
    sent = time.perf_counter()
    first = None
    job = client.submit(text, "", "", 0.0, 1.0, new_tokens, "", api_name="/send")
    for update in job:
        bubbles = bubble_texts(update[0]) if update[0] else []
        if first is None and bubbles and bubbles[-1][0] == "assistant" and bubbles[-1][1] not in ("", "…"):
            first = time.perf_counter()
    done = time.perf_counter()
    final = job.result()
    if final[3]:
        raise RuntimeError(f"the app answered with a status instead of a reply: {final[3]}")
    return sent, first or done, done, final[2]


def run_workload(label: str, server: ServerProcess, users: int, new_tokens: int) -> Outcome:
    names = [f"bench{index:02d}" for index in range(users)]
    with ThreadPoolExecutor(users) as pool:
        clients = list(pool.map(lambda name: sign_up(server, name), names))
        ask(clients[0], "Say hello.", 8)  # warm-up, untimed: first-request costs of either backend
        barrier = threading.Barrier(users)
        answers = list(pool.map(
            lambda i: ask(clients[i], f"Write a long story about {TOPICS[i % len(TOPICS)]}.", new_tokens, barrier),
            range(users),
        ))
    replies = []
    for name, (sent, first, done, conversation_id) in zip(names, answers, strict=True):
        reply = stored(server, name, conversation_id).messages[-1]
        if reply.role != "assistant":
            raise RuntimeError(f"{label}: {name}'s chat holds no reply")
        replies.append(Reply(name, first - sent, done - sent, reply.completion_tokens, reply.finish_reason or ""))
    wall = max(answer[2] for answer in answers) - min(answer[0] for answer in answers)
    return Outcome(label, replies, wall)


def app_environment(engine_url: str | None) -> dict[str, str]:
    env = {"CHAT_SIGNUP": "open", "CHAT_MAX_NEW_TOKENS": "1024"}
    if engine_url:
        env.update(CHAT_ENGINE_URL=engine_url, CHAT_ENGINE_PROTOCOL="llamacpp")
    return env


def row(outcome: Outcome, new_tokens: int) -> str:
    at_limit = sum(reply.tokens == new_tokens for reply in outcome.replies)
    return (f"{outcome.label:<22} {outcome.total_rate:9.1f} {outcome.per_user_rate:10.2f} "
            f"{outcome.ttft(.5):8.2f} {outcome.ttft(.95):8.2f} {outcome.wall:7.1f} "
            f"{outcome.tokens:6d} {at_limit:4d}/{len(outcome.replies)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    try:
        binary = llama_server_binary()
    except pytest.skip.Exception as reason:  # cannot be built here: say why, as the tests do
        raise SystemExit(f"bench/backends.py needs llama-server: {reason}") from None

    outcomes = []
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as folder, ExitStack() as stack:
        root = Path(folder)
        (root / "embedded").mkdir()
        with running_server(root / "embedded", "smollm2", **app_environment(None)) as server:
            outcomes.append(run_workload("(a) embedded engine", server, args.users, args.new_tokens))
        (root / "llama").mkdir()
        (root / "remote").mkdir()
        llama = LlamaServer(binary, root / "llama", parallel=args.users, context=args.users * 1024).start()
        stack.callback(llama.kill)
        with running_server(root / "remote", "smollm2", **app_environment(llama.url)) as server:
            outcomes.append(run_workload("(b) llama.cpp server", server, args.users, args.new_tokens))

    embedded, remote = outcomes
    print(f"{args.users} users through the app, one message each sent at once, greedy, "
          f"{args.new_tokens} new tokens asked per reply (SmolLM2-135M: (a) float32, (b) GGUF Q4_1, 16 slots)")
    print(f"{'backend':<22} {'tok/s':>9} {'user tok/s':>10} {'TTFT p50':>8} {'TTFT p95':>8} {'wall s':>7} "
          f"{'tokens':>6} {'at limit':>9}")
    for outcome in outcomes:
        print(row(outcome, args.new_tokens))
    print(f"{'ratio (b)/(a)':<22} {remote.total_rate / embedded.total_rate:9.2f} "
          f"{remote.per_user_rate / embedded.per_user_rate:10.2f} {remote.ttft(.5) / embedded.ttft(.5):8.2f} "
          f"{remote.ttft(.95) / embedded.ttft(.95):8.2f}")
    reasons = {o.label: sorted({r.finish_reason for r in o.replies}) for o in outcomes}
    print("finish reasons: " + "; ".join(f"{label} {', '.join(found)}" for label, found in reasons.items()))
    print(f"backend ratio (llamacpp/embedded tokens/s): {remote.total_rate / embedded.total_rate:.2f}")


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
