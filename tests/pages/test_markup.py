"""Every page: each input labelled, no inline script or style (the CSP forbids them), the
viewport set, and the navigation right for who is signed in."""

from __future__ import annotations

import re

import pytest

from tests.pages.conftest import PageClient, People, sign_in


def _pages(client: PageClient, people: People) -> dict[str, str]:
    pages = {}
    for path in ("/auth/login", "/auth/register", "/auth/forgot", "/auth/reset/some-token",
                 "/auth/verify/some-token"):  # fmt: skip
        pages[path] = client.get(path).get_data(as_text=True)
    pages["errors"] = client.post("/auth/register", data={}).get_data(as_text=True)
    with_mfa = people.make(with_mfa=True)
    sign_in(client, with_mfa)
    pages["/auth/mfa"] = client.get("/auth/mfa").get_data(as_text=True)
    client.post("/auth/mfa", data={"code": with_mfa.code()})
    pages["account (mfa on)"] = client.get("/auth/account").get_data(as_text=True)
    client.post("/auth/logout")
    sign_in(client, people.make(verified=False))
    pages["account (mfa off)"] = client.get("/auth/account").get_data(as_text=True)
    pages["/auth/mfa/setup"] = client.get("/auth/mfa/setup").get_data(as_text=True)
    pages["setup started"] = client.post("/auth/mfa/setup").get_data(as_text=True)
    return pages


@pytest.fixture
def pages(client: PageClient, people: People) -> dict[str, str]:
    return _pages(client, people)


def test_every_input_has_a_label(pages: dict[str, str]) -> None:
    for name, html in pages.items():
        inputs = re.findall(r"<input\b[^>]*>", html)
        for tag in inputs:
            kind = re.search(r'type="([^"]+)"', tag)
            if kind and kind.group(1) in ("hidden", "submit"):
                continue
            field_id = re.search(r'\bid="([^"]+)"', tag)
            assert field_id, f"{name}: input without id: {tag}"
            assert f'for="{field_id.group(1)}"' in html, f"{name}: no label for {tag}"
        ids = re.findall(r'\bid="([^"]+)"', html)
        assert len(ids) == len(set(ids)), f"{name}: duplicate ids"


def test_no_inline_script_or_style(pages: dict[str, str]) -> None:
    for name, html in pages.items():
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == [], name
        assert "<style" not in html, name
        assert not re.search(r"\sstyle=", html), name
        assert not re.search(r"\son[a-z]+=", html), name
        assert '<meta name="viewport"' in html, name
        assert 'src="/static/js/app.js"' in html, name


def test_navigation_for_visitors_and_signed_in_users(client: PageClient, people: People) -> None:
    anonymous = client.get("/").get_data(as_text=True)
    assert 'href="/auth/login"' in anonymous
    assert 'href="/auth/register"' in anonymous
    assert "Sign out" not in anonymous

    sign_in(client, people.make())
    html = client.get("/").get_data(as_text=True)

    assert "Ada Lovelace" in html
    assert 'href="/auth/account">Account</a>' in html
    assert re.search(r'<form class="inline-form" method="post" action="/auth/logout">', html)
    assert 'href="/auth/register"' not in html.split("</header>")[0]
    assert '<div id="flash" class="flash-region" aria-live="polite"></div>' in html
    assert re.search(r'<body hx-headers=\'\{"X-CSRFToken": "[^"]+"\}\'>', html)
