"""A tester's reply under a one-address login flood, against the same reply on a quiet server (issue 23).

A fresh server (``python -m app serve``, sign-up open, its data in a temp folder); one
tester signs up and sends ``--replies`` messages of ``--new-tokens`` tokens (greedy),
timed from send to the end of the stream: first on a quiet server, then while
``--connections`` clients from one address (127.0.0.5) post wrong logins as fast as the
server answers. Prints both medians, the ratio (goal: under 2x) and how the flood's
posts were answered.

    python bench/login_flood.py [--model smollm2] [--connections 12] [--replies 5] [--new-tokens 16]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import api_client, running_server

PASSWORD = "correct-horse-battery"


def reply_seconds(client, new_tokens: int) -> float:
    started = time.perf_counter()
    client.submit("Tell me about the sea.", "", "", 0.0, 1.0, new_tokens, "", api_name="/send").result(timeout=300)
    return time.perf_counter() - started


def flood(url: str, stop: threading.Event, answers: collections.Counter) -> None:
    transport = httpx.HTTPTransport(local_address="127.0.0.5")
    with httpx.Client(transport=transport, timeout=30) as client:
        while not stop.is_set():
            try:
                answers[client.post(url + "login", data={"username": "victim", "password": "guess"}).status_code] += 1
            except httpx.HTTPError:
                answers["error"] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--connections", type=int, default=12)
    parser.add_argument("--replies", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data, running_server(Path(data), args.model, CHAT_SIGNUP="open") as server:
        httpx.post(server.url + "signup", data={"username": "tester", "password": PASSWORD})
        tester = api_client(server.url, "tester", PASSWORD)
        reply_seconds(tester, args.new_tokens)  # warm-up
        quiet = [reply_seconds(tester, args.new_tokens) for _ in range(args.replies)]
        stop, answers = threading.Event(), collections.Counter()
        threads = [threading.Thread(target=flood, args=(server.url, stop, answers)) for _ in range(args.connections)]
        for thread in threads:
            thread.start()
        time.sleep(2)  # the flood has earned its throttle
        started = time.perf_counter()
        flooded = [reply_seconds(tester, args.new_tokens) for _ in range(args.replies)]
        elapsed = time.perf_counter() - started
        stop.set()
        for thread in threads:
            thread.join()
        tester.close()
    quiet_median, flooded_median = statistics.median(quiet), statistics.median(flooded)
    print(f"quiet reply: median {quiet_median:.2f} s ({', '.join(f'{s:.2f}' for s in quiet)})")
    print(f"under the flood: median {flooded_median:.2f} s ({', '.join(f'{s:.2f}' for s in flooded)})")
    total = sum(answers.values())
    print(f"flood: {args.connections} connections, {total} login posts ({total / (elapsed + 2):.0f}/s), "
          f"answers {dict(answers)}")
    print(f"flooded/quiet: {flooded_median / quiet_median:.2f}x (goal: under 2x)")


if __name__ == "__main__":
    main()
