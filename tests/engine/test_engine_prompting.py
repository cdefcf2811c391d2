"""PromptFormat: per-turn token ids and the window of history the model sees."""

from __future__ import annotations

import pytest

from app.engine import PromptFormat, PromptTooLong, Turn

SYSTEM = "You answer in one short sentence."
EXCHANGES = [
    ("Hi there!", "Hello! How can I help you today?"),
    ("What is 2 + 2?\nAnswer with a number.", "4"),
    ("Thanks, and the capital of Japan? 東京?", "Yes, Tokyo (東京) is Japan's capital 🙂."),
]
LAST_USER = "Tell me a joke about   spaces."


@pytest.fixture
def smol_format(smollm2_tokenizer) -> PromptFormat:
    return PromptFormat(smollm2_tokenizer, frozenset({2}), context_length=8192)


def template_ids(tokenizer, messages, *, generation_prompt):
    ids = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=generation_prompt, return_dict=False
    )
    return list(ids)


def build_conversation(fmt: PromptFormat, tokenizer, *, system: str | None, reply_ids):
    """Per-turn ids as the chat service stores them, and the same conversation as messages."""
    history: list[tuple[str, str]] = []
    ids: list[int] = []
    if system is not None:
        ids += fmt.system_turn(system)
        history.append(("system", system))
    for user, reply in EXCHANGES:
        ids += fmt.user_turn(history, user)
        history.append(("user", user))
        ids += fmt.assistant_turn(reply_ids(reply))
        history.append(("assistant", reply))
    ids += fmt.user_turn(history, LAST_USER)
    history.append(("user", LAST_USER))
    messages = [{"role": role, "content": text} for role, text in history]
    return ids, messages


@pytest.mark.parametrize("system", [SYSTEM, None], ids=["with-system", "default-system"])
def test_turn_ids_concatenate_to_the_templates_own_ids(smol_format, smollm2_tokenizer, system):
    tokenizer = smollm2_tokenizer

    def generated_with_eos(text):
        return [*tokenizer.encode(text, add_special_tokens=False), 2]

    ids, messages = build_conversation(smol_format, tokenizer, system=system, reply_ids=generated_with_eos)
    assert ids == template_ids(tokenizer, messages, generation_prompt=True)
    if system is None:  # the template's default system prompt comes with the first user turn
        assert tokenizer.decode(smol_format.user_turn([], "Hi")).startswith("<|im_start|>system\nYou are")


def test_a_reply_stopped_without_eos_is_closed_like_the_template(smol_format, smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    closing = tokenizer.encode("<|im_end|>\n", add_special_tokens=False)
    assert closing[0] == 2
    reply = tokenizer.encode("Hello! How can I", add_special_tokens=False)
    assert smol_format.assistant_turn(reply) == reply + closing
    assert smol_format.assistant_turn([*reply, 2]) == [*reply, *closing]
    assert smol_format.assistant_turn([]) == closing  # cancelled before the first token

    def generated_without_eos(text):
        return tokenizer.encode(text, add_special_tokens=False)

    ids, messages = build_conversation(smol_format, tokenizer, system=SYSTEM, reply_ids=generated_without_eos)
    assert ids == template_ids(tokenizer, messages, generation_prompt=True)


def test_reencoding_a_text_only_conversation_matches_the_template(smol_format, smollm2_tokenizer):
    messages = [("system", SYSTEM)]
    for user, reply in EXCHANGES:
        messages += [("user", user), ("assistant", reply)]
    turns = smol_format.reencode(messages)
    assert len(turns) == len(messages)
    expected = template_ids(
        smollm2_tokenizer, [{"role": r, "content": t} for r, t in messages], generation_prompt=False
    )
    assert [token for turn in turns for token in turn] == expected


def test_without_a_template_each_turn_is_its_text_then_eos(tiny_gpt2):
    tokenizer = tiny_gpt2.tokenizer
    eos = tokenizer.eos_token_id
    fmt = PromptFormat(tokenizer, tiny_gpt2.eos_token_ids, tiny_gpt2.context_length)
    assert not fmt.uses_chat_template
    text = "hello there, how are you?"
    # the Gradio tutorial: tokenizer.encode(input + tokenizer.eos_token)
    assert fmt.user_turn([], text) == tokenizer.encode(text + tokenizer.eos_token)
    assert fmt.user_turn([("user", "a"), ("assistant", "b")], text) == tokenizer.encode(text + tokenizer.eos_token)
    assert fmt.user_turn([], text)[-1] == eos
    assert fmt.system_turn("be nice") == tokenizer.encode("be nice" + tokenizer.eos_token)
    reply = tokenizer.encode("i am fine", add_special_tokens=False)
    assert fmt.assistant_turn(reply) == [*reply, eos]
    assert fmt.assistant_turn([*reply, eos]) == [*reply, eos]
    assert fmt.assistant_turn([]) == [eos]
    turns = fmt.reencode([("user", text), ("assistant", "i am fine")])
    assert turns == [tokenizer.encode(text + tokenizer.eos_token), [*reply, eos]]


def test_a_tokenizer_without_template_or_eos_is_refused(tiny_gpt2):
    import copy

    tokenizer = copy.deepcopy(tiny_gpt2.tokenizer)
    tokenizer.eos_token = None
    with pytest.raises(ValueError, match="EOS"):
        PromptFormat(tokenizer, frozenset(), 256)


# ---------------------------------------------------------------- the window


def window_format(tiny_gpt2, context_length: int) -> PromptFormat:
    return PromptFormat(tiny_gpt2.tokenizer, tiny_gpt2.eos_token_ids, context_length)


HISTORY = [
    Turn("system", [1] * 4),
    Turn("user", [2] * 5),
    Turn("assistant", [3] * 6),
    Turn("user", [4] * 5),
    Turn("assistant", [5] * 6),
]
NEW = [9] * 3
TOTAL = 4 + 5 + 6 + 5 + 6 + 3  # 29


def test_a_window_that_fits_exactly_keeps_everything(tiny_gpt2):
    fmt = window_format(tiny_gpt2, context_length=TOTAL + 10)
    window = fmt.build_prompt(HISTORY, NEW, max_new_tokens=10)
    assert window.dropped_turns == 0
    assert window.token_ids == [t for turn in HISTORY for t in turn.token_ids] + NEW
    assert len(window.token_ids) == TOTAL


def test_one_token_over_drops_the_oldest_whole_exchange_but_keeps_the_system_turn(tiny_gpt2):
    fmt = window_format(tiny_gpt2, context_length=TOTAL + 10)
    window = fmt.build_prompt(HISTORY, NEW, max_new_tokens=11)
    assert window.dropped_turns == 2
    assert window.token_ids == [1] * 4 + [4] * 5 + [5] * 6 + NEW
    # right after the system turn comes a user turn, never half an exchange
    assert window.token_ids[4] == 4


def test_dropping_continues_until_it_fits_and_may_leave_only_system_and_new_turn(tiny_gpt2):
    fmt = window_format(tiny_gpt2, context_length=TOTAL + 10)
    window = fmt.build_prompt(HISTORY, NEW, max_new_tokens=10 + 11 + 1)
    assert window.dropped_turns == 4
    assert window.token_ids == [1] * 4 + NEW
    exact = fmt.build_prompt(HISTORY, NEW, max_new_tokens=TOTAL + 10 - 7)  # system + new fill the budget
    assert exact.token_ids == [1] * 4 + NEW


def test_without_a_system_turn_the_window_starts_with_a_user_turn(tiny_gpt2):
    history = HISTORY[1:]
    fmt = window_format(tiny_gpt2, context_length=TOTAL - 4 + 10)
    assert fmt.build_prompt(history, NEW, max_new_tokens=10).dropped_turns == 0
    window = fmt.build_prompt(history, NEW, max_new_tokens=11)
    assert window.dropped_turns == 2
    assert window.token_ids == [4] * 5 + [5] * 6 + NEW


def test_a_window_never_starts_with_an_orphaned_reply(tiny_gpt2):
    # an exchange with two assistant turns (a regenerated reply kept in history): both go together
    history = [Turn("user", [2] * 2), Turn("assistant", [3] * 2), Turn("assistant", [6] * 2),
               Turn("user", [4] * 2), Turn("assistant", [5] * 2)]
    fmt = window_format(tiny_gpt2, context_length=20)
    window = fmt.build_prompt(history, [9], max_new_tokens=20 - 10)  # budget 10, total 11
    assert window.dropped_turns == 3
    assert window.token_ids == [4, 4, 5, 5, 9]


def test_a_new_turn_that_alone_does_not_fit_is_refused(tiny_gpt2):
    fmt = window_format(tiny_gpt2, context_length=TOTAL + 10)
    budget = TOTAL + 10 - 10
    assert fmt.build_prompt([], [7] * budget, max_new_tokens=10).token_ids == [7] * budget
    with pytest.raises(PromptTooLong, match="context"):
        fmt.build_prompt([], [7] * (budget + 1), max_new_tokens=10)
    # the system turn is never dropped, so it counts against the new turn
    with pytest.raises(PromptTooLong):
        fmt.build_prompt(HISTORY, [7] * (budget - 4 + 1), max_new_tokens=10)
