"""Token ids for each turn of a conversation, and the prompt window the model sees.

As in the classic Gradio chatbot tutorial, the conversation *is* its token ids:
each turn contributes ids that are stored with the message, and the next prompt is
exactly the stored ids plus the new turn's ids. Old text is never re-tokenized, so
a resumed chat replays exactly what the model saw (re-tokenizing can split text
differently and silently change the model's context).

Two formats:
- models with a chat template: a turn's ids are the tokens of the text the template
  adds for that turn (rendered with and without it, the difference tokenized);
- models without one (DialoGPT and the tutorial): each turn's text followed by EOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.engine.contract import PromptTooLong

PROBE_USER = "Hello there"
PROBE_REPLY = "GENERAL KENOBI 7319"


@dataclass(frozen=True)
class Turn:
    role: str  # system | user | assistant
    token_ids: Sequence[int]


@dataclass(frozen=True)
class PromptWindow:
    token_ids: list[int]
    dropped_turns: int  # oldest turns left out to fit the context (storage keeps them)


class PromptFormat:
    """How one tokenizer turns conversation turns into ids."""

    def __init__(self, tokenizer: Any, eos_token_ids: frozenset[int], context_length: int) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.context_length = context_length
        self.uses_chat_template = bool(getattr(tokenizer, "chat_template", None))
        if not self.uses_chat_template and tokenizer.eos_token is None:
            raise ValueError("a model without a chat template needs an EOS token to separate turns")
        self._closing_text = self._assistant_closing_text() if self.uses_chat_template else ""

    # ------------------------------------------------------------ per-turn ids

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _render(self, messages: list[dict[str, str]], *, generation_prompt: bool) -> str:
        if not messages:
            return ""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )

    def _assistant_closing_text(self) -> str:
        """What the template writes after an assistant reply's text (e.g. ``<|im_end|>\\n``)."""
        rendered = self._render(
            [{"role": "user", "content": PROBE_USER}, {"role": "assistant", "content": PROBE_REPLY}],
            generation_prompt=False,
        )
        at = rendered.rfind(PROBE_REPLY)
        return rendered[at + len(PROBE_REPLY) :] if at >= 0 else ""

    def system_turn(self, text: str) -> list[int]:
        if self.uses_chat_template:
            return self._encode(self._render([{"role": "system", "content": text}], generation_prompt=False))
        return self._encode(text + self.tokenizer.eos_token)

    def user_turn(self, history: Sequence[tuple[str, str]], text: str) -> list[int]:
        """Ids for a new user message after ``history`` ((role, text) pairs), ready for the reply.

        With a chat template this includes the assistant generation prompt, so the
        prompt for the reply is history ids + these ids, nothing else.
        """
        if not self.uses_chat_template:
            return self._encode(text + self.tokenizer.eos_token)
        before_messages = [{"role": role, "content": content} for role, content in history]
        before = self._render(before_messages, generation_prompt=False)
        after = self._render([*before_messages, {"role": "user", "content": text}], generation_prompt=True)
        if not after.startswith(before):
            # a template that rewrites earlier turns: take the turn as it renders on its own
            alone = self._render([{"role": "user", "content": text}], generation_prompt=True)
            return self._encode(alone)
        return self._encode(after[len(before) :])

    def assistant_turn(self, generated_ids: Sequence[int]) -> list[int]:
        """The ids a reply contributes to the history: what was generated, then the turn's end.

        A reply that ended with EOS already holds the end-of-turn token; one that was
        stopped, cut by length or interrupted gets it appended, so the next turn
        always follows a closed one.
        """
        ids = list(generated_ids)
        ended_with_eos = bool(ids) and ids[-1] in self.eos_token_ids
        if not self.uses_chat_template:
            return ids if ended_with_eos else [*ids, *self._encode(self.tokenizer.eos_token)]
        closing = self._closing_text
        if ended_with_eos:
            eos_text = self.tokenizer.decode([ids[-1]])
            if closing.startswith(eos_text):
                closing = closing[len(eos_text) :]
        return ids + (self._encode(closing) if closing else [])

    def reencode(self, messages: Sequence[tuple[str, str]]) -> list[list[int]]:
        """Ids for a conversation known only as text (imported, or made with another model)."""
        ids: list[list[int]] = []
        history: list[tuple[str, str]] = []
        for role, text in messages:
            if role == "system":
                ids.append(self.system_turn(text))
            elif role == "user":
                ids.append(self.user_turn(history, text))
            else:
                ids.append(self.assistant_turn(self._encode(text)))
            history.append((role, text))
        return ids

    # ------------------------------------------------------------ the window

    def build_prompt(self, history: Sequence[Turn], new_turn: Sequence[int], max_new_tokens: int) -> PromptWindow:
        """History ids + new turn ids, dropping the oldest whole exchanges to fit the context.

        Leading system turns are always kept; the window always starts at a user
        turn, so the model never sees half an exchange.
        """
        budget = self.context_length - max_new_tokens
        system = [turn for turn in _leading_system(history)]
        rest = list(history[len(system) :])
        fixed = sum(len(t.token_ids) for t in system) + len(new_turn)
        if fixed > budget:
            raise PromptTooLong(
                f"this message needs {fixed} tokens plus {max_new_tokens} for the reply, more than the "
                f"model's context of {self.context_length}; shorten it or lower max new tokens"
            )
        total = fixed + sum(len(t.token_ids) for t in rest)
        dropped = 0
        while rest and total > budget:
            total -= len(rest.pop(0).token_ids)
            dropped += 1
            while rest and rest[0].role != "user":
                total -= len(rest.pop(0).token_ids)
                dropped += 1
        ids = [token for turn in (*system, *rest) for token in turn.token_ids]
        return PromptWindow(ids + list(new_turn), dropped)


def _leading_system(history: Sequence[Turn]) -> list[Turn]:
    leading = []
    for turn in history:
        if turn.role != "system":
            break
        leading.append(turn)
    return leading


def shared_prompt_start(loaded: Any) -> list[int]:
    """The ids every first prompt starts with (a template's default system turn), found by
    building two first prompts and keeping what they share; empty for models without a template."""
    try:
        form = PromptFormat(loaded.tokenizer, loaded.eos_token_ids, loaded.context_length)
    except ValueError:
        return []
    if not form.uses_chat_template:
        return []
    first, second = form.user_turn([], PROBE_USER), form.user_turn([], PROBE_REPLY)
    shared = 0
    while shared < min(len(first), len(second)) and first[shared] == second[shared]:
        shared += 1
    return list(first[:shared])
