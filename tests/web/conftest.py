"""The HTTP side: the real server in a subprocess with real clients, its security, and the page's
handlers.

Shared fixtures come from ``tests/conftest.py`` (databases, users, the model fixtures);
this room adds the one server the ``/metrics`` and ``/admin`` tests share (a start costs 10-50 s).
"""

from __future__ import annotations

import httpx
import pytest

from tests.models import SERVER_CONTEXT, build_tiny_llama
from tests.page_client import PASSWORD
from tests.support import add_user, running_server

METRICS_TOKEN = "scrape-secret-123"
RATE_LIMIT = 3


@pytest.fixture(scope="package")
def team_lead_server(tmp_path_factory):
    """A server with ``/metrics`` on (``METRICS_TOKEN``), a low message rate, the admin ``admin``
    (password ``admin-password``) and the testers tess, alice, bob and carol."""
    model = build_tiny_llama(tmp_path_factory.mktemp("team-lead-model"), max_positions=SERVER_CONTEXT)
    data = tmp_path_factory.mktemp("team-lead-data")
    env = {"CHAT_METRICS_TOKEN": METRICS_TOKEN, "CHAT_RATE_LIMIT": str(RATE_LIMIT), "CHAT_MAX_NEW_TOKENS": "1900",
           "CHAT_SIGNUP": "open"}
    with running_server(data, str(model), **env) as process:
        add_user(data, "tess", PASSWORD)  # through the CLI, which the admin audit records
        for name in ("alice", "bob", "carol"):  # sign-up is quicker than a CLI process each
            response = httpx.post(process.url + "signup", data={"username": name, "password": PASSWORD}, timeout=30)
            assert response.status_code == 303, response.text
        yield process
