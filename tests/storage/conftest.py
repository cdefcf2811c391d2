"""The repository, the journal and the migrations, on SQLite and (with CHAT_TEST_POSTGRES_URL)
PostgreSQL.

Shared fixtures come from ``tests/conftest.py`` (databases, users, the model fixtures);
this room adds none of its own yet.
"""
