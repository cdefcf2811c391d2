"""What storage refuses before it touches the database, with the sentence a person reads.

Every rule lives here once, so a chat typed on the page, one appended by the journal and
one restored from an export file are held to the same limits (the column sizes of
storage/models.py and what UTF-8, JSON and 32-bit integers can hold).
"""

from __future__ import annotations

import json
import re
import unicodedata

from storage.errors import InvalidInput
from storage.models import RATING_COMMENT_MAX, TITLE_MAX, USERNAME_MAX
from storage.repository.records import NewMessage

ROLES = ("system", "user", "assistant")
USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
FINISH_REASON_MAX = 16  # messages.finish_reason is VARCHAR(16)
INT32_MAX = 2**31 - 1  # the counts are INTEGER columns
SEARCH_MAX_CHARS = 100
RATING_VALUES = {"up": 1, "down": -1}
RATING_NAMES = {value: name for name, value in RATING_VALUES.items()}


def check_text(text: str, what: str = "text") -> str:
    """Refuse strings that cannot be stored as UTF-8 (lone surrogates) or NUL bytes."""
    if not isinstance(text, str):
        raise InvalidInput(f"{what} must be a string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidInput(
            f"{what} contains invalid Unicode (an unpaired surrogate at position {error.start})"
        ) from None
    if "\x00" in text:
        raise InvalidInput(f"{what} contains a NUL character")
    return text


def storable(text: str) -> bool:
    """Whether ``text`` can be sent to the database at all; a lookup of anything else finds nothing."""
    try:
        check_text(text)
    except InvalidInput:
        return False
    return True


def check_title(title: str) -> str:
    """A title is one line (it heads a sidebar row and an exported section): runs of
    whitespace, newlines included, become one space."""
    title = " ".join(check_text(title, "title").split())
    if not title:
        raise InvalidInput("title is empty")
    if len(title) > TITLE_MAX:
        raise InvalidInput(f"title is {len(title)} characters long; at most {TITLE_MAX} allowed")
    return title


def check_username(username: str) -> str:
    """The name as stored: NFKC-normalised (fullwidth letters become plain ones), then checked."""
    username = unicodedata.normalize("NFKC", check_text(username, "username")).strip()
    if not 1 <= len(username) <= USERNAME_MAX or not USERNAME_PATTERN.match(username):
        raise InvalidInput(
            f"username must be 1-{USERNAME_MAX} characters of letters, digits and . _ - @, "
            "starting with a letter or digit"
        )
    return username


def username_key(username: str) -> str:
    """What makes two names the same name: Unicode's caseless match (NFKC, casefold, NFKC)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", username.strip()).casefold())


def check_message(message: NewMessage) -> None:
    """A new message fits its columns: a known role, storable text, 32-bit counts, JSON params."""
    if message.role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}, not {message.role!r}")
    check_text(message.content, "message text")
    if message.finish_reason is not None:
        check_text(message.finish_reason, "finish reason")
        if len(message.finish_reason) > FINISH_REASON_MAX:
            raise InvalidInput(f"finish reason is longer than {FINISH_REASON_MAX} characters")
    for what, value in (
        ("prompt_tokens", message.prompt_tokens),
        ("completion_tokens", message.completion_tokens),
        ("latency_ms", message.latency_ms),
    ):
        if value is not None and (not isinstance(value, int) or not -INT32_MAX - 1 <= value <= INT32_MAX):
            raise InvalidInput(f"{what} must be a whole number that fits 32 bits, not {value!r}")
    if message.params is not None:
        try:
            json.dumps(message.params, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise InvalidInput(f"params cannot be stored as JSON: {error}") from None


def check_rating(value: str, comment: str | None) -> tuple[int, str | None]:
    """The stored number for "up" / "down" and the comment, stripped (empty: none)."""
    if value not in RATING_VALUES:
        raise InvalidInput(f"a rating is 'up' or 'down', not {value!r}")
    if comment is not None:
        comment = check_text(comment, "comment").strip() or None
    if comment is not None and len(comment) > RATING_COMMENT_MAX:
        raise InvalidInput(f"the comment is {len(comment)} characters long; at most {RATING_COMMENT_MAX} allowed")
    return RATING_VALUES[value], comment


def check_search(search: str) -> str:
    """The search words, stripped; refused when too long to be a search (costly to match)."""
    wanted = check_text(search, "search").strip()
    if len(wanted) > SEARCH_MAX_CHARS:
        raise InvalidInput(f"the search is {len(wanted):,} characters long; at most {SEARCH_MAX_CHARS} allowed")
    return wanted
