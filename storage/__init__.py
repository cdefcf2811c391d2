"""Durable storage of users, conversations and messages (with their exact token ids)."""
