"""``/admin`` on the real server: closed to everyone but admins, account actions with the CLI's rules and an
audit line each, usage and live figures after real replies, and the page itself in Chromium."""

from __future__ import annotations

import re

import httpx
import pytest

from app.web.admin import ACTIONS
from tests.page_client import PASSWORD, client_for, send
from tests.support import login_cookies

ADMIN_PASSWORD = "admin-password"  # running_server's CHAT_ADMIN_PASSWORD for the first admin, "admin"
NEW_PASSWORD = "a fresh passphrase 42"


@pytest.fixture(scope="module")
def server(team_lead_server):
    return team_lead_server


@pytest.fixture(scope="module")
def admin(server):
    with httpx.Client(base_url=server.url, cookies=login_cookies(server.url, "admin", ADMIN_PASSWORD),
                      timeout=30) as client:
        yield client


def usernames(admin: httpx.Client) -> set[str]:
    return {a["username"] for a in admin.get("/admin/data").json()["accounts"]}


def test_a_tester_and_a_stranger_get_a_bare_403_on_every_admin_path(server, admin):
    tester = login_cookies(server.url, "tess", PASSWORD)
    audit_before = admin.get("/admin/data").json()["audit"]
    for cookies in (tester, None):
        with httpx.Client(base_url=server.url, cookies=cookies, timeout=30) as client:
            for path in ("/admin", "/admin/", "/admin/data", "/admin/figures", *(f"/admin/users/{a}" for a in ACTIONS)):
                form = {"name": "admin", "password": NEW_PASSWORD, "admin": "on"}
                for response in (client.get(path, follow_redirects=False),
                                 client.post(path, data=form, follow_redirects=False)):
                    assert (response.status_code, response.text) == (403, "Forbidden."), path
            response = client.post("/admin/users/add", data={"name": "mallory", "password": NEW_PASSWORD})
            assert response.status_code == 403
    # nothing changed: the admin still logs in with the old password, no user was added, nothing audited
    login_cookies(server.url, "admin", ADMIN_PASSWORD)
    assert "mallory" not in usernames(admin) and "admin" in usernames(admin)
    assert admin.get("/admin/data").json()["audit"] == audit_before


def test_an_admin_manages_a_user_through_the_clis_rules_and_each_action_is_audited(server, admin):
    def act(action: str, **form: str) -> httpx.Response:
        return admin.post(f"/admin/users/{action}", data=form)

    assert admin.get("/admin/users/add").status_code == 405 and admin.post("/admin/data").status_code == 405
    weak = act("add", name="newbie", password="password")
    assert weak.status_code == 400 and weak.json()["error"].startswith("Nothing changed:")
    assert "newbie" not in usernames(admin)
    assert act("add", name="newbie", password=NEW_PASSWORD).json() == {"message": "Added tester newbie."}
    assert act("add", name="NEWBIE", password=NEW_PASSWORD).status_code == 400  # names differing in case are one
    newbie = login_cookies(server.url, "newbie", NEW_PASSWORD)

    with httpx.Client(base_url=server.url, cookies=newbie, timeout=30) as client:
        assert client.get("/admin").status_code == 403
        assert act("role", name="newbie", admin="on").status_code == 200
        page = client.get("/admin")
        assert page.status_code == 200 and "<h1>Admin</h1>" in page.text  # the flag is read on every request
        assert act("role", name="newbie").status_code == 200
        assert client.get("/admin").status_code == 403
        assert act("sessions", name="newbie").json() == {"message": "Ended 1 login of newbie."}
        assert client.get("/admin/data").status_code == 403
        assert client.get("/", follow_redirects=False).status_code == 303  # logged out

    assert act("password", name="newbie", password="another passphrase 7").status_code == 200
    with pytest.raises(RuntimeError):
        login_cookies(server.url, "newbie", NEW_PASSWORD)
    login_cookies(server.url, "newbie", "another passphrase 7")

    for refused in (act("remove", name="admin"), act("role", name="Admin")):  # an admin cannot lock themselves out
        assert refused.status_code == 400 and "your own" in refused.json()["error"]
    assert act("remove", name="nobody").status_code == 404
    assert act("remove", name="").status_code == 400
    assert act("remove", name="newbie").json() == {"message": "Removed newbie and their chats."}
    with pytest.raises(RuntimeError):
        login_cookies(server.url, "newbie", "another passphrase 7")

    audit = [(a["actor"], a["action"], a["target"]) for a in admin.get("/admin/data").json()["audit"]]
    assert audit[:7] == [
        ("admin", "remove user", "newbie"), ("admin", "reset password", "newbie"), ("admin", "end sessions", "newbie"),
        ("admin", "make tester", "newbie"), ("admin", "make admin", "newbie"), ("admin", "add user", "newbie"),
        ("(console)", "add user", "tess"),
    ]


def test_usage_and_live_figures_show_replies(server, admin):
    tess = client_for(server, "tess")
    _, final = send(tess, "hello there", max_new_tokens=6)
    for text in ("second", "third"):
        send(tess, text, final[2], max_new_tokens=6)

    figures = admin.get("/admin/figures").json()
    assert sum(figures["outcomes"].values()) >= 3 and figures["hour"]["replies"] >= 3
    assert 0 < figures["hour"]["ttft_p50_ms"] <= figures["hour"]["ttft_p95_ms"]
    assert figures["samples"] and figures["health"]["status"] == "ok"
    data = admin.get("/admin/data", params={"days": 1}).json()
    row = next(u for u in data["by_user"] if u["name"] == "tess")
    assert (row["chats"], row["messages"]) == (1, 6) and row["output_tokens"] > 0 and row["last_active"]
    assert [m["name"] for m in data["by_model"]] and data["by_model"][0]["messages"] >= 6
    for days in ("0", "abc", "9999", "-1"):
        response = admin.get("/admin/data", params={"days": days})
        assert response.status_code == 400 and "whole number of days" in response.json()["error"]


@pytest.mark.slow
def test_the_admin_page_in_chromium_adds_a_user_and_plots_figures(server):
    from tests.browser import ARTIFACTS, PHONE, browser_pages

    created = httpx.post(server.url + "signup", data={"username": "viewer", "password": PASSWORD}, timeout=30)
    assert created.status_code == 303
    viewer = client_for(server, "viewer")
    _, final = send(viewer, "a few replies for the plots", max_new_tokens=6)
    send(viewer, "and one more", final[2], max_new_tokens=6)
    with browser_pages() as new_page:
        for name, viewport, scheme in (("light", None, "light"), ("dark", None, "dark"), ("phone", PHONE, "dark")):
            page = new_page(viewport=viewport, color_scheme=scheme)
            if name == "light":  # our login page once; the other two views reuse its cookie
                page.goto(server.url + "login?next=/admin")
                page.get_by_label("Username").fill("admin")
                page.get_by_label("Password").fill(ADMIN_PASSWORD)
                page.get_by_role("button", name="Log in").click()
                page.locator("h1", has_text="Admin").wait_for()
                cookies = page.context.cookies()
            else:
                page.context.add_cookies(cookies)
            page.goto(server.url + "admin")
            page.locator("#accounts td", has_text="tess").first.wait_for()
            page.locator("#p-ttft polyline").first.wait_for(state="attached", timeout=15_000)
            replies = re.search(r"over (\d+) replies", page.locator("#n-ttft").inner_text())
            assert replies and int(replies.group(1)) >= 2
            if name == "light":
                page.get_by_label("New user name").fill("paula")
                page.get_by_label("New user password").fill(NEW_PASSWORD)
                page.get_by_role("button", name="Add user").click()
                page.locator("#status", has_text="Added tester paula.").wait_for()
                page.locator("#audit td", has_text="paula").first.wait_for()
            background = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
            assert (background == "rgb(255, 255, 255)") == (scheme == "light")
            overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0  # on a phone the tables scroll inside their box, the page does not
            page.screenshot(path=ARTIFACTS / f"admin-{name}.png", full_page=True)
    login_cookies(server.url, "paula", NEW_PASSWORD)
