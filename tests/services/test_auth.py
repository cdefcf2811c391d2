"""Password hashing: salted scrypt, verifiable, nothing of the password stored."""

from __future__ import annotations

import base64

import pytest

from app.accounts.passwords import WeakPassword, check_password_strength, hash_password, verify_password


def test_hashes_are_salted_and_verify():
    password = "correct horse battery"
    first, second = hash_password(password), hash_password(password)
    assert first != second  # a fresh salt each time
    assert verify_password(password, first) and verify_password(password, second)

    scheme, n, r, p, salt, digest = first.split("$")
    assert scheme == "scrypt" and int(n) >= 2**14 and int(r) >= 8 and int(p) >= 1
    assert len(base64.b64decode(salt)) >= 16 and len(base64.b64decode(digest)) >= 32
    assert first.split("$")[4] != second.split("$")[4]


@pytest.mark.parametrize("password", ["hunter22-password", "pässwörd-ünïcode 🙂", "x" * 1024])
def test_stored_hash_contains_no_plaintext(password):
    stored = hash_password(password)
    assert password not in stored
    assert password.encode() not in base64.b64decode(stored.split("$")[-1])
    assert verify_password(password, stored)


def test_wrong_passwords_fail():
    stored = hash_password("the-right-password")
    for wrong in ["the-right-passwore", "The-right-password", "the-right-password ", "", "the-right"]:
        assert not verify_password(wrong, stored)


@pytest.mark.parametrize(
    "stored",
    ["", "plaintext", "scrypt$1$2$3", "bcrypt$16384$8$1$c2FsdA==$ZGlnZXN0", "scrypt$x$8$1$c2FsdA==$ZGlnZXN0",
     "scrypt$16384$8$1$!!notbase64$ZGlnZXN0"],
)
def test_malformed_stored_hashes_never_verify(stored):
    assert verify_password("anything-at-all", stored) is False


def test_password_strength_limits():
    check_password_strength("8chars!!")
    with pytest.raises(WeakPassword, match="at least 8"):
        check_password_strength("7chars!")
    with pytest.raises(WeakPassword, match="at most"):
        check_password_strength("x" * 1025)


@pytest.mark.parametrize("password, why", [
    (" " * 8, "at least 8"), ("  pass  ", "at least 8"), ("password", "too easy to guess"),
    ("passw0rd", "too easy to guess"), ("12345678", "too easy to guess"), ("qwertyuiop", "too easy to guess"),
    ("Alice-Smith", "must not be the user name"), ("ALICE-SMITH ", "must not be the user name"),
    ("alice-smith1", "too easy to guess"),
])
def test_password_policy_refuses_guessable_passwords_with_a_reason(password, why):
    with pytest.raises(WeakPassword, match=why):
        check_password_strength(password, "alice-smith")


def test_password_policy_accepts_unremarkable_passphrases():
    for password in ("plum tree at midnight", "violet-harbour-lamp", "password-123", "x" * 60 + "Q7#kd!2"):
        check_password_strength(password, "alice")
