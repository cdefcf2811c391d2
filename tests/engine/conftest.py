"""The generation engines: the continuous batcher, its caches and kernels, the engine process, and the
remote engines against a real llama-server.

Shared fixtures come from ``tests/conftest.py`` (databases, users, the model fixtures);
this room adds none of its own yet.
"""
