"""Turn a growing list of token ids into text deltas that are always valid text.

Byte-level tokenizers split one character over several tokens, and SentencePiece
ones attach a token's leading space only in context, so decoding token by token
breaks emoji and loses or doubles spaces. As in TGI and vLLM, each step decodes a
short window twice (with and without the newest tokens) and emits the difference,
holding back while the window ends in an incomplete character.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT_CHAR = "\ufffd"


def decode_text(tokenizer: Any, ids: list[int]) -> str:
    """A reply's text from its ids, exactly as it is streamed (one setting for every caller)."""
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


class IncrementalDecoder:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return decode_text(self.tokenizer, ids)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly empty)."""
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT_CHAR):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def full_text(self) -> str:
        return self._decode(self.ids)


def shown_prefix(tokenizer: Any, ids: list[int], shown: str, *, look_back: int = 64) -> tuple[list[int], str] | None:
    """The longest prefix of ``ids`` whose text is no more than ``shown``, and that text.

    A Stop ends what the tester sees at once, while the engine may already have made a
    few more tokens; storing those would store text nobody saw (and the next prompt
    would continue from it). The streamed text is the decoder's output, so it ends on a
    prefix of the ids; only the last ``look_back`` prefixes are tried (the engine is never
    further ahead than that), and None means no prefix fits, e.g. when the shown text was
    sanitised, so the caller keeps the whole reply.
    """
    for count in range(len(ids), max(-1, len(ids) - look_back - 1), -1):
        text = decode_text(tokenizer, ids[:count])
        if shown.startswith(text) and not text.endswith(REPLACEMENT_CHAR):
            return ids[:count], text
    return None
