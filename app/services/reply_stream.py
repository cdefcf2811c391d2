"""Replies being generated: streaming them to the tester, Stop, and the drain at shutdown.

One reply at a time per chat. However the stream ends (done, Stop, a closed tab, an
error, the server stopping), the reply is handed to :class:`ReplyStore` under a
shield, so a cancelled handler cannot lose what the tester already saw; the server's
shutdown waits on :meth:`LiveReplies.settled` for those writes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from app.engine import ChatEngine, SamplingParams
from app.services.errors import ChatError
from app.services.events import ChatEvent
from app.services.persist import LiveReply, ReplyStore
from app.services.rules import valid_text
from storage.repository import ConversationRecord, MessageRecord

QUEUE_REPORT_SECONDS = 0.5
# the shortest time between two text events of one reply (tokens in between are joined)
FRAME_INTERVAL_SECONDS = 0.05
# text events per second for all replies together: each becomes a page frame, and the web
# server's event loop pays a few milliseconds of Gradio's work per frame (issue 24). With
# many replies streaming each one's frames come further apart (16 replies: one every 0.27 s,
# 32: every 0.53 s), so the loop's share of a core stays bounded as the team grows.
FRAMES_PER_SECOND = 60.0


class LiveReplies:
    """The replies under way, by conversation id, and the count of those not yet stored."""

    def __init__(self, engine: ChatEngine, store: ReplyStore) -> None:
        self.engine = engine
        self.store = store
        self._live: dict[str, LiveReply] = {}
        self._active = 0
        self._none_active = asyncio.Event()
        self._none_active.set()

    # ------------------------------------------------------------ looking

    def frame_interval(self) -> float:
        """How far apart one reply's text events are now: the frame budget shared by the live replies."""
        return max(FRAME_INTERVAL_SECONDS, len(self._live) / FRAMES_PER_SECOND)

    def text_of(self, conversation: ConversationRecord) -> str | None:
        """The reply being generated in this (already opened, so owned) chat, or None."""
        reply = self._live.get(conversation.id)
        if reply is None or reply.user_id != conversation.user_id:
            return None
        return reply.text

    def refuse_if_replying(self, conversation_id: str | None) -> None:
        if conversation_id and conversation_id in self._live:
            raise ChatError("A reply is still being written in this chat: wait for it, or press Stop.")

    def stop(self, user_id: int, conversation_id: str | None) -> bool:
        """Stop the user's reply in this chat at once; False if none was running.

        The engine is told immediately; the reply's own stream stops showing text at
        once and stores what was generated, marked stopped.
        """
        reply = self._live.get(conversation_id or "")
        if reply is None or reply.user_id != user_id:
            return False
        reply.stop_requested.set()
        reply.stream.cancel()
        return True

    async def settled(self, max_seconds: float) -> bool:
        """Wait until every reply under way has been stored (or journaled); False on timeout."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_seconds):
                await self._none_active.wait()
                return True
        return False

    # ------------------------------------------------------------ streaming

    async def stream(self, reply: LiveReply, params: SamplingParams, dropped_turns: int) -> AsyncIterator[ChatEvent]:
        """The reply's events, then (when it ended here) ``done`` with the stored message."""
        ending = "error"
        ended_here = False  # True only when no exception is on its way out (yielding is allowed)
        self._live[reply.conversation_id] = reply
        self._active += 1
        self._none_active.clear()
        try:
            async for event in self._events(reply):
                yield event
            ending = "stopped" if reply.stop_requested.is_set() else "done"
            ended_here = True
        except asyncio.CancelledError:
            ending = "stopped"  # the Stop button cancels the handler
            raise
        except GeneratorExit:
            ending = "disconnected"  # the tab was closed or the client went away
            raise
        finally:
            reply.stream.cancel()
            storing = asyncio.ensure_future(self.store.persist(reply, params, dropped_turns, ending))
            storing.add_done_callback(self._reply_settled)
            try:
                message = await asyncio.shield(storing)
            finally:
                if self._live.get(reply.conversation_id) is reply:
                    del self._live[reply.conversation_id]
            if ended_here and message is not None:
                yield ChatEvent("done", reply.conversation_id, text=message.content, message=message)

    def _reply_settled(self, _storing: asyncio.Future[MessageRecord | None]) -> None:
        self._active -= 1
        if not self._active:
            self._none_active.set()

    @staticmethod
    async def _stopped_within(stopping: asyncio.Future[Any], seconds: float) -> bool:
        done, _ = await asyncio.wait({stopping}, timeout=seconds)
        return bool(done)

    async def _events(self, reply: LiveReply) -> AsyncIterator[ChatEvent]:
        """Stream text events; while queued, report the queue position every half second.

        At most one text event per ``frame_interval()``: the deltas of a burst are
        joined, since every event becomes a page frame whose cost on the event loop is
        what starved the model when many replies streamed (issue 24).
        A Stop ends the events at once (not at the engine's next step), so nothing
        more is shown after the click.
        """
        conversation_id = reply.conversation_id
        loop = asyncio.get_running_loop()
        last_frame = -FRAME_INTERVAL_SECONDS
        iterator = reply.stream.__aiter__()
        next_delta: asyncio.Task[str] | None = None
        stopping = asyncio.ensure_future(reply.stop_requested.wait())
        try:
            while True:
                if next_delta is None:
                    next_delta = asyncio.ensure_future(iterator.__anext__())
                done, _ = await asyncio.wait(
                    {next_delta, stopping}, timeout=QUEUE_REPORT_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
                if stopping in done:
                    yield ChatEvent("stopped", conversation_id, text=reply.text)
                    return
                if not done:
                    position = reply.stream.queue_position
                    if position is not None:
                        running = (reply.served.engine if reply.served else self.engine).stats().running
                        yield ChatEvent("waiting", conversation_id, text=reply.text, position=position, running=running)
                    continue
                try:
                    delta = next_delta.result()
                except StopAsyncIteration:
                    return
                finally:
                    next_delta = None
                reply.text += valid_text(delta + reply.stream.ready_text())
                hold = last_frame + self.frame_interval() - loop.time()
                if hold > 0:
                    # deltas that arrive meanwhile join this frame; a Stop still ends it at once
                    if await self._stopped_within(stopping, hold):
                        yield ChatEvent("stopped", conversation_id, text=reply.text)
                        return
                    reply.text += valid_text(reply.stream.ready_text())
                last_frame = loop.time()
                yield ChatEvent("text", conversation_id, text=reply.text)
        finally:
            stopping.cancel()
            if next_delta is not None:
                next_delta.cancel()
