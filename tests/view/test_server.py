"""The HTTP layer: only the page, JSON answers and PNGs of the stores' images are served."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest

from raddino.view.server import is_loopback


def request(url: str, path: str, host: str | None = None) -> tuple[int, str, bytes]:
    """GET ``path`` exactly as written (no client-side normalisation of ``..``)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.putrequest("GET", path, skip_host=host is not None)
        if host is not None:
            connection.putheader("Host", host)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        connection.close()


def test_the_page_and_its_files_are_served(server_url: str):
    status, kind, body = request(server_url, "/")
    assert status == 200 and kind.startswith("text/html") and b"/static/app.js" in body
    for name, kind_prefix in (("app.js", "text/javascript"), ("style.css", "text/css")):
        status, kind, _ = request(server_url, f"/static/{name}")
        assert status == 200 and kind.startswith(kind_prefix), name
    status, kind, body = request(server_url, "/api/view/0/1.png?thumb=1")
    assert status == 200 and kind == "image/png" and body.startswith(b"\x89PNG")


SECRET = b"[project]"  # the first line of pyproject.toml: must never come back


@pytest.mark.parametrize(
    "path",
    [
        "/static/../pyproject.toml",
        "/static/..%2f..%2f..%2fpyproject.toml",
        "/static/%2e%2e/%2e%2e/pyproject.toml",
        "/../../../../etc/passwd",
        "/static//etc/passwd",
        "/api/view/0/-1.png",
        "/api/view/0/12.png",
        "/api/view/0/..%2f..%2fetc%2fpasswd.png",
        "/api/pca/9/0.png",
        "/etc/passwd",
        "/tests/view/conftest.py",
    ],
)
def test_a_request_for_a_file_outside_the_stores_is_refused(server_url: str, path: str):
    status, kind, body = request(server_url, path)
    assert status in (400, 404), (path, status)
    assert kind == "application/json"
    assert SECRET not in body and b"root:" not in body
    assert "error" in json.loads(body)


def test_requests_naming_another_host_are_refused(server_url: str):
    """A site that rebinds its name to 127.0.0.1 must not read the images (DNS rebinding)."""
    port = urlsplit(server_url).port
    status, _, body = request(server_url, "/api/session", host=f"evil.example:{port}")
    assert status == 403 and b"evil.example" in body
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert request(server_url, "/api/session", host=host)[0] == 200


def test_errors_come_back_as_one_line_of_json_not_a_traceback(server_url: str):
    status, _, body = request(server_url, "/api/similarity?encoder=2&image=0&row=0&col=0")
    assert status == 422
    message = json.loads(body)["error"]
    assert "no patch tokens" in message and "Traceback" not in message
    status, _, body = request(server_url, "/api/similarity?image=zero&row=0&col=0")
    assert status == 400 and json.loads(body)["error"] == "image='zero': expected a whole number"
    status, _, body = request(server_url, "/api/neighbours?encoder=0")
    assert status == 400 and json.loads(body)["error"] == "missing parameter 'image'"


def test_the_figure_downloads_as_a_png_attachment(server_url: str):
    status, kind, body = request(
        server_url, "/api/figure.png?encoder=0&image=1&row=2&col=3&count=2"
    )
    assert status == 200 and kind == "image/png" and body.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
    ],
)
def test_loopback_hosts_are_recognised(host: str, loopback: bool):
    assert is_loopback(host) == loopback
