"""The HTTP side: the real server in a subprocess with real clients, its security, and the page's
handlers.

Shared fixtures come from ``tests/conftest.py`` (databases, users, the model fixtures);
this room adds none of its own yet.
"""
