"""Developers find Swagger UI from every page (the footer) and the landing page, and Swagger UI
links back to the portal; every link on the landing page leads somewhere that exists."""

from __future__ import annotations

import re

from tests.pages.conftest import PageClient


def _links(html: str) -> list[str]:
    return re.findall(r'<a [^>]*href="([^"]+)"', html)


def test_the_footer_links_to_the_api_reference_and_it_links_back(client: PageClient) -> None:
    for path in ("/", "/auth/login", "/auth/register"):
        page = client.get(path)
        assert page.status_code == 200
        footer = page.get_data(as_text=True).split('<footer class="site-footer">')[1]
        assert "/api/docs" in _links(footer.split("</footer>")[0]), path
    docs = client.get("/api/docs").get_data(as_text=True)
    assert "/" in _links(docs)
    assert "Back to Portal" in docs
    assert "/api/v1/openapi.json" in _links(docs)
    assert client.get("/api/v1/openapi.json").status_code == 200


def test_every_link_on_the_landing_page_exists(client: PageClient) -> None:
    html = client.get("/").get_data(as_text=True)
    main = html.split("<main", 1)[1].split("</main>", 1)[0]
    links = {href for href in _links(main) if href.startswith("/")}
    assert {"/auth/register", "/auth/login", "/api/docs", "/healthz"} <= links
    for href in links:
        assert client.get(href).status_code == 200, href
    # No promise of a page that does not exist (there is no admin console yet).
    assert "admin console" not in html.lower()
