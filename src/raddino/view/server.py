"""The HTTP layer of ``raddino view``: routes onto :class:`~raddino.view.session.ViewSession`.

Werkzeug (WSGI routing, requests and a threaded server; already installed with tensorboard)
serves three kinds of thing, and nothing else:

* the page: ``index.html``, ``app.js`` and ``style.css`` from this package, read once at start;
* JSON answers under ``/api/`` (errors too: ``{"error": message}``, shown in the page);
* PNGs made from the stores' images, named by gallery and encoder index, never by a path.

No request names a file, so no request can reach one outside the stores and manifests given.
Bound to a loopback address, the server also refuses requests whose ``Host`` is not that
address (a page on another site that rebinds its name to 127.0.0.1 cannot read the images).
"""

from __future__ import annotations

import ipaddress
import json
import sys
import traceback
from importlib import resources

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from raddino.view.session import PAGE_SIZE, ViewError, ViewSession

STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
MAX_TARGETS = 1000

ROUTES = Map(
    [
        Rule("/", endpoint="index"),
        Rule("/static/<name>", endpoint="static"),
        Rule("/api/session", endpoint="session"),
        Rule("/api/images", endpoint="images"),
        Rule("/api/similarity", endpoint="similarity"),
        Rule("/api/neighbours", endpoint="neighbours"),
        Rule("/api/figure.png", endpoint="figure"),
        Rule("/api/view/<int:encoder>/<int:image>.png", endpoint="view"),
        Rule("/api/pca/<int:encoder>/<int:image>.png", endpoint="pca"),
    ],
    strict_slashes=False,
)


def json_response(data: dict, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, mimetype="application/json")


def png_response(data: bytes, download: str | None = None) -> Response:
    response = Response(data, mimetype="image/png")
    if download:
        response.headers["Content-Disposition"] = f'attachment; filename="{download}"'
    else:
        response.headers["Cache-Control"] = "private, max-age=3600"
    return response


def int_arg(request: Request, name: str, default: int | None = None) -> int:
    text = request.args.get(name)
    if text is None or text == "":
        if default is None:
            raise ViewError(f"missing parameter {name!r}")
        return default
    try:
        return int(text)
    except ValueError:
        raise ViewError(f"{name}={text!r}: expected a whole number") from None


def filters_of(request: Request) -> dict[str, str]:
    """``f.COLUMN=VALUE`` parameters: manifest columns and the value each must have."""
    return {key[2:]: value for key, value in request.args.items() if key.startswith("f.")}


def chosen_targets(session: ViewSession, request: Request, image: int) -> list[int]:
    """``targets=3,7,9`` as given, else the first ``count`` filtered images but the query."""
    listed = request.args.get("targets")
    if listed:
        try:
            return [int(part) for part in listed.split(",") if part.strip()][:MAX_TARGETS]
        except ValueError:
            raise ViewError(f"targets={listed!r}: expected comma-separated numbers") from None
    count = min(int_arg(request, "count", 16), MAX_TARGETS)
    return session.targets(image, filters_of(request), count)


class ViewApp:
    """The WSGI application: one session, the static page, the routes above."""

    def __init__(self, session: ViewSession) -> None:
        self.session = session
        folder = resources.files("raddino.view") / "static"
        self.static = {name: (folder / name).read_bytes() for name in STATIC}
        self.allowed_hosts: set[str] | None = None  # set by serve_view once the port is known

    def __call__(self, environ, start_response):
        request = Request(environ)
        return self.respond(request)(environ, start_response)

    def respond(self, request: Request) -> Response:
        if self.allowed_hosts is not None and request.host not in self.allowed_hosts:
            return json_response({"error": f"host {request.host!r} is not served here"}, 403)
        try:
            endpoint, values = ROUTES.bind_to_environ(request.environ).match()
            return getattr(self, f"on_{endpoint}")(request, **values)
        except ViewError as error:
            return json_response({"error": str(error)}, error.status)
        except HTTPException as error:
            return json_response({"error": f"{error.code} {error.name}"}, error.code or 500)
        except Exception as error:  # a bug: one line in the page, the traceback on the terminal
            traceback.print_exc(file=sys.stderr)
            return json_response({"error": f"internal error: {type(error).__name__}: {error}"}, 500)

    # ------------------------------------------------------------------ page

    def on_index(self, request: Request) -> Response:
        return Response(self.static["index.html"], mimetype="text/html")

    def on_static(self, request: Request, name: str) -> Response:
        if name not in STATIC:
            raise ViewError(f"no file {name!r} here", 404)
        response = Response(self.static[name], content_type=STATIC[name])
        response.headers["Cache-Control"] = "no-cache"
        return response

    # ------------------------------------------------------------------ API

    def on_session(self, request: Request) -> Response:
        return json_response(self.session.describe())

    def on_images(self, request: Request) -> Response:
        per_page = min(max(int_arg(request, "per_page", PAGE_SIZE), 1), 500)
        page = self.session.page(filters_of(request), int_arg(request, "page", 0), per_page)
        return json_response(page)

    def on_similarity(self, request: Request) -> Response:
        image = int_arg(request, "image")
        result = self.session.similarity(
            int_arg(request, "encoder", 0),
            image,
            int_arg(request, "row"),
            int_arg(request, "col"),
            chosen_targets(self.session, request, image),
        )
        return json_response(result)

    def on_neighbours(self, request: Request) -> Response:
        result = self.session.neighbours(
            int_arg(request, "encoder", 0),
            int_arg(request, "image"),
            request.args.get("by", "cls"),
            min(max(int_arg(request, "k", 10), 1), 100),
        )
        return json_response(result)

    def on_figure(self, request: Request) -> Response:
        image = int_arg(request, "image")
        name, data = self.session.figure_png(
            int_arg(request, "encoder", 0),
            image,
            int_arg(request, "row"),
            int_arg(request, "col"),
            chosen_targets(self.session, request, image),
        )
        return png_response(data, download=name)

    def on_view(self, request: Request, encoder: int, image: int) -> Response:
        thumbnail = request.args.get("thumb") == "1"
        return png_response(self.session.view_png(encoder, image, thumbnail))

    def on_pca(self, request: Request, encoder: int, image: int) -> Response:
        return png_response(self.session.pca_png(encoder, image))


class QuietRequestHandler(WSGIRequestHandler):
    """No line per request on the terminal (the page asks for dozens of thumbnails)."""

    def log_request(self, code="-", size="-") -> None:
        pass


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve_view(session: ViewSession, host: str = "127.0.0.1", port: int = 0) -> BaseWSGIServer:
    """A threaded server for ``session`` bound to ``host``:``port`` (0 = a free port), not yet
    serving: call ``serve_forever()`` (Ctrl-C returns from it) or run it in a thread and
    ``shutdown()`` it. Its address is ``server.host``, ``server.port``."""
    app = ViewApp(session)
    server = make_server(host, port, app, threaded=True, request_handler=QuietRequestHandler)
    if is_loopback(host):
        app.allowed_hosts = {
            f"{name}:{server.port}" for name in ("127.0.0.1", "localhost", "[::1]", host)
        }
    return server


def url_of(server: BaseWSGIServer) -> str:
    host = server.host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{server.port}/"
