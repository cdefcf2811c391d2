"""Chat list labels: the day said the way people say it, in the tester's own time zone."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.web.page.chat_list import when

NOW = datetime(2026, 11, 26, 14, 0, tzinfo=UTC)  # a Thursday


@pytest.mark.parametrize("moment, timezone, expected", [
    (datetime(2026, 11, 26, 9, 5, tzinfo=UTC), "UTC", "09:05"),
    (datetime(2026, 11, 25, 23, 30, tzinfo=UTC), "UTC", "Yesterday 23:30"),
    (datetime(2026, 11, 25, 23, 30, tzinfo=UTC), "Europe/Berlin", "00:30"),  # already today in Berlin
    (datetime(2026, 11, 23, 8, 0, tzinfo=UTC), "UTC", "Mon 08:00"),
    (datetime(2026, 1, 5, 8, 0, tzinfo=UTC), "UTC", "5 Jan"),
    (datetime(2025, 12, 31, 8, 0, tzinfo=UTC), "UTC", "31 Dec 2025"),
    (datetime(2026, 11, 26, 9, 5), "no/such zone", "09:05"),  # naive times are UTC; unknown zones too
])
def test_when(moment, timezone, expected):
    assert when(moment, NOW, timezone) == expected
