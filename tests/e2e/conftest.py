"""Whole journeys: a real browser on the real server, faults (disk full, database down, crashes) and
replicas.

Shared fixtures come from ``tests/conftest.py`` (databases, users, the model fixtures);
this room adds none of its own yet.
"""
