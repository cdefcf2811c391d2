"""Passwords: a strength policy, salted scrypt hashes, constant-time checks, nothing reversible stored.

The policy (sign-up, ``users add/set-password``, the account page): at least 8
characters once surrounding spaces are ignored, not the user's name, and not easy to
guess by zxcvbn's estimate (Dropbox's estimator, kept up as a PyPI package: common
passwords, dictionary words, names, keyboard walks, repeats, dates, l33t spellings).
A password must reach ``MIN_ZXCVBN_SCORE`` (about a million guesses and more), the
threshold zxcvbn's authors suggest for online attacks; "password", "passw0rd",
"12345678" and "admin123" do not.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import unicodedata

from zxcvbn import zxcvbn

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
MIN_ZXCVBN_SCORE = 2  # 0-4: 2 means "somewhat guessable": at least 10^6 guesses
ZXCVBN_MAX_CHARS = 72  # zxcvbn's own limit; the rest of a longer password only adds strength


class WeakPassword(ValueError):
    """The password is too short or too long to accept."""


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _comparable(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def check_password_strength(password: str, username: str = "") -> None:
    """Raise WeakPassword with a sentence saying what to change."""
    if len(password) > MAX_PASSWORD_LENGTH:
        raise WeakPassword(f"password must be at most {MAX_PASSWORD_LENGTH} characters")
    if len(password.strip()) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(
            f"password must be at least {MIN_PASSWORD_LENGTH} characters (not counting spaces around it)"
        )
    if username and _comparable(password.strip()) == _comparable(username.strip()):
        raise WeakPassword("password must not be the user name")
    verdict = zxcvbn(password[:ZXCVBN_MAX_CHARS], user_inputs=[username] if username else None)
    if verdict["score"] < MIN_ZXCVBN_SCORE:
        why = verdict["feedback"].get("warning") or "it is easy to guess"
        hint = " ".join(verdict["feedback"].get("suggestions") or [])
        raise WeakPassword(f"password is too easy to guess ({why.rstrip('.')}). {hint}".strip())


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash``: parameters travel with the hash so they can be raised later."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode("utf-8", "surrogatepass"),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def generate_password() -> str:
    """A password for the first admin: ~100 bits, easy to copy from a console."""
    return secrets.token_urlsafe(12)
