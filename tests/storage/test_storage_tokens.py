"""Token ids: the exact little-endian uint32 encoding, and exact round trips through the database."""

from __future__ import annotations

import struct

import pytest

from storage.errors import InvalidInput
from storage.repository import NewMessage
from storage.tokens import pack_token_ids, unpack_token_ids


def test_pack_is_little_endian_uint32_four_bytes_per_id():
    assert pack_token_ids([]) == b""
    assert pack_token_ids([0x12345678]) == b"\x78\x56\x34\x12"
    assert pack_token_ids([1, 65536, 2**32 - 1]) == (
        b"\x01\x00\x00\x00" + b"\x00\x00\x01\x00" + b"\xff\xff\xff\xff"
    )
    ids = [0, 7, 65535, 65536, 123_456_789, 2**32 - 1]
    blob = pack_token_ids(ids)
    assert len(blob) == 4 * len(ids)
    assert blob == struct.pack(f"<{len(ids)}I", *ids)
    assert unpack_token_ids(blob) == ids
    assert unpack_token_ids(b"") == [] and unpack_token_ids(None) == []


@pytest.mark.parametrize("bad", [-1, 2**32, 2**40, 1.5, "7", None])
def test_pack_refuses_ids_outside_uint32(bad):
    with pytest.raises(InvalidInput, match="token id"):
        pack_token_ids([1, 2, bad, 3])


def test_unpack_refuses_a_truncated_blob():
    with pytest.raises(InvalidInput, match="multiple of 4"):
        unpack_token_ids(b"\x01\x00\x00")


@pytest.mark.parametrize(
    "ids",
    [
        [],
        [42],
        list(range(100_000)),
        [65535, 65536, 70_000, 2**31, 2**32 - 1, 0],
    ],
    ids=["empty", "one", "100k", "above-65535"],
)
async def test_token_ids_round_trip_exactly(repository, make_user, ids):
    alice = await make_user()
    chat = await repository.create_conversation(alice.id, "tokens", "m")
    appended = await repository.append_message(alice.id, chat.id, NewMessage("assistant", "x", ids))
    assert appended.token_ids == ids

    stored = await repository.get_conversation(alice.id, chat.id)
    assert len(stored.messages) == 1
    assert stored.messages[0].token_ids == ids
    assert all(type(token) is int for token in stored.messages[0].token_ids)
    assert stored.token_history() == ids


async def test_token_history_concatenates_messages_in_order(repository, make_user):
    alice = await make_user()
    chat = await repository.create_conversation(alice.id, "tokens", "m")
    await repository.append_messages(
        alice.id,
        chat.id,
        [NewMessage("system", "s", [1, 2]), NewMessage("user", "u", []), NewMessage("assistant", "a", [2**32 - 1])],
    )
    await repository.append_message(alice.id, chat.id, NewMessage("user", "again", [65536]))
    stored = await repository.get_conversation(alice.id, chat.id)
    assert [m.token_ids for m in stored.messages] == [[1, 2], [], [2**32 - 1], [65536]]
    assert stored.token_history() == [1, 2, 2**32 - 1, 65536]


async def test_out_of_range_token_id_is_refused_and_nothing_is_stored(repository, make_user):
    alice = await make_user()
    chat = await repository.create_conversation(alice.id, "tokens", "m")
    with pytest.raises(InvalidInput, match="token id"):
        await repository.append_messages(
            alice.id, chat.id, [NewMessage("user", "fine", [1]), NewMessage("assistant", "bad", [2**32])]
        )
    with pytest.raises(InvalidInput, match="token id"):
        await repository.append_message(alice.id, chat.id, NewMessage("user", "bad", [-1]))
    assert (await repository.get_conversation(alice.id, chat.id)).messages == []
