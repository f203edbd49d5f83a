"""GET / and GET /docs: served by the service itself, nothing from elsewhere."""

from __future__ import annotations

import re

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from service.web import STATIC


def policy(response: TestResponse) -> dict[str, list[str]]:
    header = response.headers["Content-Security-Policy"]
    directives = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


def test_page_needs_no_key_and_loads_nothing_from_elsewhere(client: FlaskClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert "<label" in html and 'id="target"' in html
    csp = policy(response)
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'"]
    assert csp["connect-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]
    # Every script and stylesheet is this service's own.
    for url in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert url.startswith(("/", "#")) or url == "data:,", url  # data:, an empty icon
    assert "<script>" not in html and " style=" not in html  # nothing inline: CSP forbids it


def test_page_assets_are_served_and_nothing_outside_the_folder(client: FlaskClient) -> None:
    for name in ("page.js", "page.css"):
        response = client.get(f"/ui/{name}")
        assert response.status_code == 200, name
        assert response.get_data() == (STATIC / name).read_bytes()
    assert client.get("/ui/../__init__.py").status_code == 404
    assert client.get("/ui/nothing.js").status_code == 404


def test_every_label_names_a_control(client: FlaskClient) -> None:
    html = client.get("/").get_data(as_text=True)
    ids = set(re.findall(r'\bid="([^"]+)"', html))
    controls = re.findall(r"<(?:input|select|textarea)\b[^>]*>", html)
    labelled = set(re.findall(r'<label for="([^"]+)"', html))
    assert labelled <= ids
    for control in controls:
        found = re.search(r'\bid="([^"]+)"', control)
        assert found and found.group(1) in labelled, control


def test_docs_render_the_spec_with_vendored_swagger_ui(client: FlaskClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    for url in re.findall(r'(?:src|href)="([^"]+)"', html):
        if url != "data:,":
            assert url.startswith("/"), url
            assert client.get(url).status_code == 200, url
    assert policy(response)["script-src"] == ["'self'"]
    bundle = client.get("/docs/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and b"SwaggerUIBundle" in bundle.get_data()
    assert client.get("/docs/assets/index.html").status_code == 404
    assert 'url: "/openapi.yaml"' in (STATIC / "docs.js").read_text()


def test_files_carry_an_etag_and_answer_304(client: FlaskClient) -> None:
    first = client.get("/ui/page.js")
    assert first.mimetype == "text/javascript"
    again = client.get("/ui/page.js", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304
    assert "Content-Security-Policy" in again.headers
