"""Blocks whose streamed frames pay only for the outputs they change (and no import search per frame).

A streaming handler returns a dict of the components it changes; Gradio fills every
other output with a bare ``skip()`` (``{"__type__": "update"}``) and then treats that
empty update like any prop update: it builds a new component from the old one's
constructor arguments and recomputes its config. For a reply's frame that changes the
chat and its status, the three outputs it leaves alone (the message box, the chat list
and its rows) cost about four times what the frame's real content does (measured with
the page's own send event: 6.1 ms a frame against 1.4 ms when every output carries a
value), and a reply makes up to 20 frames a second. Rebuilding a component from its own
arguments changes nothing, so a bare skip is answered here as the client expects it,
and only the outputs that carry something go through Gradio's postprocessing.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from typing import Any

import gradio as gr
from gradio.blocks import Block, BlockFunction, convert_component_dict_to_list, postprocess_update_dict
from gradio.state_holder import SessionState

BARE_SKIP: dict[str, str] = {"__type__": "update"}


_SKIP_ANSWERS: dict[type, dict[str, Any]] = {}


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
        return result
