"""Device tokens (OWASP's "device cookies"): proof that this browser has logged in as this user before.

The failed-login throttle counts per client address and per (name, address), and one
office NAT or one reverse proxy puts a whole team behind one address: a stranger
failing logins as alice there would slow alice too. So a browser that logs in as
alice receives a token naming alice, signed with the server's key; presented with a
login as alice it exempts the attempt from the address throttles. The token is tied
to the name (useless for guessing anyone else's password) and has its own failure
count (``LoginGuard``), so a stolen one buys only a few guesses before it is slowed
like any stranger.

A token is ``<name, base64>.<nonce>.<HMAC-SHA256(key, name NUL nonce)>``; nothing is
stored on the server but the key. The key lives in a file of the data dir, made on
the first start (owner-only permissions): replicas that should honour each other's
tokens share that file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

KEY_BYTES = 32
NONCE_BYTES = 16
MAX_TOKEN_CHARS = 256


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_or_create_key(path: Path) -> bytes:
    """The server's signing key, made once (readable by the owner only) and read on every start."""
    try:
        key = path.read_bytes()
        if len(key) >= KEY_BYTES:
            return key
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(key)
    return key


@dataclass(frozen=True)
class DeviceToken:
    """A verified token: whose it is, and the nonce that names this device in failure counts."""

    username: str  # case-folded, as names compare
    nonce: str


class DeviceTokens:
    """Issues and verifies device tokens with one key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _signature(self, username: str, nonce: str) -> str:
        message = username.encode("utf-8", "surrogatepass") + b"\0" + nonce.encode("ascii")
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest())

    def issue(self, username: str) -> str:
        name = username.casefold()
        nonce = _b64(secrets.token_bytes(NONCE_BYTES))
        return f"{_b64(name.encode('utf-8', 'surrogatepass'))}.{nonce}.{self._signature(name, nonce)}"

    def verify(self, token: str | None) -> DeviceToken | None:
        """The token's owner and nonce when the signature holds; None for anything else."""
        if not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            return None
        encoded_name, nonce, signature = token.split(".")
        try:
            name = _unb64(encoded_name).decode("utf-8", "surrogatepass")
            nonce.encode("ascii")
        except (ValueError, UnicodeError):
            return None
        if not hmac.compare_digest(signature, self._signature(name, nonce)):
            return None
        return DeviceToken(name, nonce)

    def cookie_suffix(self, username: str) -> str:
        """A short per-user name for the cookie (so one browser can hold several users' tokens),
        which does not show the name to whoever looks at the cookie jar."""
        digest = hmac.new(self._key, b"cookie\0" + username.casefold().encode("utf-8", "surrogatepass"),
                          hashlib.sha256).digest()
        return _b64(digest[:9])
