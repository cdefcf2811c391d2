"""What a tester can do, tested in-process on the real repository and a tiny real engine: chats,
replies, versions, ratings, exports, limits, passwords.

Shared fixtures come from ``tests/conftest.py`` (databases, users, the model fixtures);
this room adds none of its own yet.
"""
