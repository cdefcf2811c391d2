"""Message text to the Markdown the chat page renders: code stays code, nothing else is HTML.

The page renders Markdown (with syntax highlighting) in the browser, and its
sanitizer keeps ordinary HTML tags, so text from testers and from the model is
made inert here, on the server: outside code, ``<`` and ``&`` become entities and
image syntax becomes a plain link (a remote image would be fetched by every
browser that shows the reply: a way for model output to send data out).

Inside code nothing is escaped, because Markdown already shows code literally
(escaping there is what showed ``&lt;`` in code blocks). What counts as code is
decided the way CommonMark decides it, for the constructs that matter:

- a fence (three or more backticks or tildes, indented at most three spaces)
  runs to a closing fence of the same character and at least the same length,
  or to the end of the text. An unclosed fence (always the case while a reply
  streams, and for good when a reply is cut) is closed here, so notes added
  after the text are never drawn inside the code block;
- a code span opens with a backtick run that is not backslash-escaped and closes
  with a run of exactly the same length. Spans are matched within one line and
  never across a table pipe: where this module and the browser's parser could
  disagree, the text is treated as not code, which at worst shows an entity,
  never live HTML.

Because every ``<`` outside what is certainly code is escaped, the browser's
parser finds no HTML tag that could swallow a backtick, so it sees the same
code spans as this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FENCE_OPEN = re.compile(r"^( {0,3})(`{3,}|~{3,})(.*)$")
ASCII_PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


@dataclass(frozen=True)
class Rendered:
    """Markdown safe to hand to the page, and whether the text ended inside an open fence."""

    markdown: str
    open_fence: bool


def safe_markdown(text: str) -> Rendered:
    """``text`` (from a tester or the model) as inert Markdown; an open fence is closed."""
    out: list[str] = []
    fence: tuple[str, int] | None = None  # (character, length) of the open fence
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            out.extend(escape_inline(line) for line in paragraph)
            paragraph.clear()

    for line in text.split("\n"):
        if fence is not None:
            out.append(line)
            if closes_fence(line, fence):
                fence = None
            continue
        opening = FENCE_OPEN.match(line)
        if opening and not (opening.group(2)[0] == "`" and "`" in opening.group(3)):
            flush()
            fence = (opening.group(2)[0], len(opening.group(2)))
            out.append(opening.group(1) + opening.group(2) + escape_info(opening.group(3)))
            continue
        paragraph.append(line)
    flush()
    if fence is not None:
        out.append(fence[0] * fence[1])
    return Rendered("\n".join(out), fence is not None)


def closes_fence(line: str, fence: tuple[str, int]) -> bool:
    stripped = line.rstrip()
    indent = len(stripped) - len(stripped.lstrip(" "))
    run = stripped.lstrip(" ")
    return indent <= 3 and len(run) >= fence[1] and set(run) == {fence[0]}


def escape_info(info: str) -> str:
    """The info string (language name) after a fence is attribute text, not code."""
    return escape_text(info)


OUTSIDE_CODE = re.compile(r"\\[\s\S]|!\[|[&<]")
REPLACEMENTS = {"&": "&amp;", "<": "&lt;", "![": "\\!["}


def escape_text(text: str) -> str:
    """Outside code: no HTML, no entities, no images (a backslash pair is already literal)."""
    return OUTSIDE_CODE.sub(lambda match: REPLACEMENTS.get(match.group(0), match.group(0)), text)


def escape_inline(line: str) -> str:
    """Escape one line outside fences, leaving its code spans as they are."""
    pieces: list[str] = []
    plain_start = 0
    index = 0
    length = len(line)
    while index < length:
        char = line[index]
        if char == "\\" and index + 1 < length and line[index + 1] in ASCII_PUNCTUATION:
            index += 2  # an escaped character (an escaped backtick opens nothing)
            continue
        if char != "`":
            index += 1
            continue
        run_end = index
        while run_end < length and line[run_end] == "`":
            run_end += 1
        run = run_end - index
        closing = find_closing_run(line, run_end, run)
        if closing is None or "|" in line[run_end:closing]:
            index = run_end  # a lone backtick run is literal text
            continue
        pieces.append(escape_text(line[plain_start:index]))
        pieces.append(line[index : closing + run])
        index = plain_start = closing + run
    pieces.append(escape_text(line[plain_start:]))
    return "".join(pieces)


def find_closing_run(line: str, start: int, run: int) -> int | None:
    """Where a backtick run of exactly ``run`` characters starts at or after ``start``."""
    index = start
    while index < len(line):
        if line[index] != "`":
            index += 1
            continue
        end = index
        while end < len(line) and line[end] == "`":
            end += 1
        if end - index == run:
            return index
        index = end
    return None
