"""Compact, exact encoding of token ids: little-endian uint32, four bytes per id.

A JSON list of ints costs ~6 bytes per id and a parse on every load; a fixed-width
blob is smaller, loads with one ``frombytes`` and cannot drift through float or
string conversions. uint32 covers every vocabulary in use (ids above 65,535 included).
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence

from storage.errors import InvalidInput

_MAX_ID = 2**32 - 1
_TYPECODE = "I" if array("I").itemsize == 4 else "L"


def pack_token_ids(token_ids: Sequence[int]) -> bytes:
    """Encode ids as a little-endian uint32 blob; refuses ids that do not fit."""
    try:
        packed = array(_TYPECODE, token_ids)
    except (OverflowError, TypeError) as error:
        bad = next((t for t in token_ids if not isinstance(t, int) or not 0 <= t <= _MAX_ID), None)
        raise InvalidInput(f"token id {bad!r} is not an integer in 0..{_MAX_ID}") from error
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def unpack_token_ids(blob: bytes | None) -> list[int]:
    """Decode a blob written by :func:`pack_token_ids`."""
    if not blob:
        return []
    if len(blob) % 4:
        raise InvalidInput(f"token blob of {len(blob)} bytes is not a multiple of 4")
    unpacked = array(_TYPECODE)
    unpacked.frombytes(blob)
    if sys.byteorder == "big":
        unpacked.byteswap()
    return unpacked.tolist()
