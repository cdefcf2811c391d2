"""The page's frames answered by LeanBlocks say exactly what Gradio's own postprocessing says.

LeanBlocks answers a bare skip without rebuilding the skipped component (issue 24); a
frame must still reach the client as it would through ``gr.Blocks``. Both run here on
the page's real send event. (The session's own copy of each component differs: Gradio's
rebuild drops the skipped component's value from it; that copy only serves Gradio's deep
links, which the page does not use.)
"""

from __future__ import annotations

import asyncio

import gradio as gr
import pytest
from gradio.state_holder import SessionState

from app.config import Settings
from app.web.page.lean_blocks import LeanBlocks
from app.web.page.service_holder import ServiceHolder
from app.web.page.ui import build_ui


@pytest.fixture(scope="module")
def page() -> LeanBlocks:
    demo = build_ui(ServiceHolder(), Settings.from_env({}))
    assert isinstance(demo, LeanBlocks)
    return demo


def send_event(demo: LeanBlocks):
    return next(fn for fn in demo.fns.values() if fn.api_name == "send")


def frames(fn) -> list:
    chatbot, message, conversation, status, chat_list, chat_rows = fn.outputs
    bubbles = [{"role": "user", "content": "hi <b>there</b>"}, {"role": "assistant", "content": "hello"}]
    return [
        {chatbot: bubbles, conversation: "c-1", status: ""},
        {chatbot: bubbles, message: "", conversation: "c-1", status: "", chat_rows: "<div>row</div>"},
        {status: "⏳ waiting"},
        {chat_list: gr.update(choices=[("a · now", "c-1")], value="c-1"), chat_rows: "<p>x</p>"},
        {message: gr.update(visible=True, value="typed")},
        gr.skip(),
        [bubbles, gr.skip(), "c-2", gr.skip(), gr.skip(), "<i>r</i>"],
    ]


def test_each_frame_matches_gradios_own_postprocessing(page: LeanBlocks) -> None:
    fn = send_event(page)

    async def both(lean_frame, plain_frame) -> tuple[list, list]:
        lean = await page.postprocess_data(fn, lean_frame, SessionState(page))
        plain = await gr.Blocks.postprocess_data(page, fn, plain_frame, SessionState(page))
        return lean, plain

    # each path gets its own copy: Gradio pops an update's value out of the dict it is given
    for lean_frame, plain_frame in zip(frames(fn), frames(fn), strict=True):
        lean, plain = asyncio.run(both(lean_frame, plain_frame))
        assert lean == plain, plain_frame


def test_a_skipped_output_is_not_rebuilt(page: LeanBlocks) -> None:
    """The point of LeanBlocks: Gradio's path builds a new component for each skipped output, ours keeps it."""
    fn = send_event(page)
    chatbot, message, conversation, status, chat_list, _rows = fn.outputs
    shown = {message: gr.update(visible=True), chat_list: gr.update(choices=[("a", "c-1")])}
    text_frame = {chatbot: [{"role": "assistant", "content": "hi"}], conversation: "c-1", status: ""}

    async def kept_after_a_text_frame(postprocess) -> list[bool]:
        state = SessionState(page)
        await postprocess(fn, dict(shown), state)
        before = [state.get(block._id) for block in (message, chat_list)]
        await postprocess(fn, dict(text_frame), state)
        return [state.get(block._id) is old for block, old in zip((message, chat_list), before, strict=True)]

    assert asyncio.run(kept_after_a_text_frame(page.postprocess_data)) == [True, True]
    plain = asyncio.run(kept_after_a_text_frame(lambda *args: gr.Blocks.postprocess_data(page, *args)))
    assert plain == [False, False]  # what LeanBlocks saves: if Gradio stops rebuilding, this class can go


def test_a_frame_does_not_search_the_path_for_an_absent_matplotlib(page: LeanBlocks) -> None:
    """Gradio imports matplotlib around every handler call; with it absent, the failure is immediate."""
    import importlib.util
    import sys

    if importlib.util.find_spec("matplotlib") is not None and sys.modules.get("matplotlib") is not None:
        pytest.skip("matplotlib is installed here: its import is cached like any other")
    assert "matplotlib" in sys.modules and sys.modules["matplotlib"] is None
    with pytest.raises(ImportError):
        import matplotlib  # noqa: F401
