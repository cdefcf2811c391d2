"""What a streamed frame costs in Gradio, cut to what the frame changes (issue 24).

A reply makes up to 20 frames a second, each through Gradio's postprocessing on the
event loop. Three costs there bought nothing, measured on the page's own send event:

- every output a frame leaves alone (a bare ``skip()``) was rebuilt: a new component
  from the old one's arguments and its config recomputed; for the message box, the chat
  list and its rows that was 6.1 ms of a 20-bubble frame against 1.4 ms when every output
  carries a value. LeanBlocks answers a bare skip as Gradio would, without the rebuild;
- the chat itself was serialised bubble by bubble and then walked node by node for files
  to move into Gradio's cache: 4.4 ms a frame with a long chat (100 bubbles) on screen.
  TextChatbot serialises each text bubble once and keeps it;
- Gradio imports matplotlib around every handler call; when it is not installed, each
  failed import searched the whole path again (see ``skip_absent_matplotlib``).
"""

from __future__ import annotations

import abc
import copy
import importlib.util
import sys
from typing import Any, ClassVar

import gradio as gr
from gradio.blocks import Block, BlockFunction, convert_component_dict_to_list, postprocess_update_dict
from gradio.state_holder import SessionState

BARE_SKIP: dict[str, str] = {"__type__": "update"}


_SKIP_ANSWERS: dict[type, dict[str, Any]] = {}
BUBBLE_CACHE_SIZE = 8192


class TextBubbles:
    """What makes a Chatbot a TextChatbot: it only ever shows text bubbles (``{"role", "content": str}``),
    so a frame can skip what only files need.

    Gradio serialises a streamed chat twice over per frame: each bubble through pydantic
    models, then the whole result walked node by node looking for files to move into its
    cache, for bubbles that did not change since the last frame. Here each bubble
    is serialised once, by Gradio's own ``postprocess``, and kept by its role and text; a
    frame assembles the kept ones. Anything else (files, metadata) goes Gradio's way.
    A text bubble's serialised form depends on its role and text only, not on the
    component's props, so the kept bubbles are shared by every page's copy of the chat.
    """

    _wire_bubbles: ClassVar[dict[tuple[str, str], list[dict[str, Any]]]] = {}

    def get_block_name(self) -> str:
        """The browser draws it with the Chatbot's own code (it looks components up by this name)."""
        return "chatbot"

    def get_block_class(self) -> str:
        return "chatbot"

    @staticmethod
    def all_text(value: Any) -> bool:
        return isinstance(value, list) and all(
            isinstance(bubble, dict) and bubble.keys() == {"role", "content"} and isinstance(bubble["content"], str)
            and bubble["role"] in ("user", "assistant") for bubble in value
        )

    def wire_value(self: Any, value: list[dict[str, str]]) -> list[dict[str, Any]]:
        """The chat as Gradio's ``postprocess(value).model_dump()`` gives it, a bubble at a time."""
        wire: list[dict[str, Any]] = []
        for bubble in value:
            key = (bubble["role"], bubble["content"])
            cached = self._wire_bubbles.get(key)
            if cached is None:
                cached = self.postprocess([bubble]).model_dump()
                if len(self._wire_bubbles) >= BUBBLE_CACHE_SIZE:
                    self._wire_bubbles.clear()  # a crude bound: refilling costs one frame's worth
                self._wire_bubbles[key] = cached
            # a fresh outer dict per frame: Gradio may annotate what it sends, never the parts
            wire.extend(dict(part) for part in cached)
        return wire


# built as layout.py builds ChatRows: ComponentMeta would write a .pyi stub into the source
# tree for any Component subclass; this one adds no events and no constructor
TextChatbot: type[gr.Chatbot] = abc.ABCMeta.__new__(
    type(gr.Chatbot), "TextChatbot", (TextBubbles, gr.Chatbot), {"__module__": __name__, "__qualname__": "TextChatbot"},
)


def skip_absent_matplotlib() -> None:
    """Gradio enters a matplotlib context around every call of a handler, streamed frames
    included, and each entry runs ``import matplotlib``. Python caches only successful
    imports, so without matplotlib installed each frame searched every folder on the path
    again (about a tenth of the event loop's busy time at 32 testers, profiled). A None in
    ``sys.modules`` is Python's documented way to make that import fail at once; it is set
    only when matplotlib cannot be imported anyway."""
    if "matplotlib" not in sys.modules and importlib.util.find_spec("matplotlib") is None:
        sys.modules["matplotlib"] = None  # type: ignore[assignment]


def is_bare_skip(value: Any) -> bool:
    return isinstance(value, dict) and value == BARE_SKIP


def skip_answer(block: Block) -> dict[str, Any]:
    """What Gradio sends the client for a bare skip of this kind of component (HTML adds an empty
    ``props``), worked out once per class by Gradio's own function."""
    kind = type(block)
    if kind not in _SKIP_ANSWERS:
        _SKIP_ANSWERS[kind] = postprocess_update_dict(block, dict(BARE_SKIP), postprocess=False)
    return copy.deepcopy(_SKIP_ANSWERS[kind])


class LeanBlocks(gr.Blocks):
    """``gr.Blocks`` with bare skips answered without rebuilding the skipped components."""

    async def postprocess_data(
        self, block_fn: BlockFunction, predictions: list | dict, state: SessionState | None
    ) -> list[Any]:
        outputs = list(block_fn.outputs)
        if len(outputs) < 2 or block_fn.batch or block_fn.is_validator_function:
            return await super().postprocess_data(block_fn, predictions, state)
        if isinstance(predictions, dict) and predictions and all(isinstance(key, Block) for key in predictions):
            predictions = convert_component_dict_to_list(outputs, predictions)
        elif is_bare_skip(predictions):
            predictions = [dict(BARE_SKIP) for _ in outputs]
        if not isinstance(predictions, (list, tuple)) or len(predictions) != len(outputs):
            return await super().postprocess_data(block_fn, predictions, state)
        # a State's skip is bookkeeping, not a rebuild: Gradio keeps handling those
        kept = [index for index, value in enumerate(predictions) if not is_bare_skip(value) or outputs[index].stateful]
        chats = {index: predictions[index] for index in kept
                 if block_fn.postprocess and self.is_plain_text_chat(outputs[index], predictions[index], state)}
        kept = [index for index in kept if index not in chats]
        if len(kept) == len(outputs):
            return await super().postprocess_data(block_fn, list(predictions), state)
        processed: list[Any] = []
        if kept:
            # the same function over only the outputs that change (a shallow copy: nothing else differs)
            narrowed = copy.copy(block_fn)
            narrowed.outputs = [outputs[index] for index in kept]
            values = [predictions[index] for index in kept]
            processed = await super().postprocess_data(narrowed, values if len(kept) > 1 else values[0], state)
        result: list[Any] = [skip_answer(block) for block in outputs]
        for index, value in zip(kept, processed, strict=True):
            result[index] = value
        for index, value in chats.items():
            result[index] = self.text_chat_frame(outputs[index], value, state)
        return result

    @staticmethod
    def is_plain_text_chat(block: Block, value: Any, state: SessionState | None) -> bool:
        """A TextChatbot (or a page's own copy of it) given only text bubbles."""
        return (isinstance(block, TextBubbles) and state is not None
                and isinstance(state.get(block._id, block), TextBubbles) and TextBubbles.all_text(value))

    @staticmethod
    def text_chat_frame(block: Any, value: list[dict[str, str]], state: SessionState | None) -> Any:
        """What Gradio's plain-value branch does for this output, minus the walk for files that cannot be there."""
        if state is not None:
            block = state.get(block._id, block)
        wire = block.wire_value(value)
        if state is not None:
            if block._id not in state:
                state[block._id] = block
            state._update_value_in_config(block._id, wire)
        return wire
