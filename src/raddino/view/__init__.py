"""``raddino view``: a local web page over features stores, the paper's Figure 2 to click.

* :mod:`raddino.view.sources`: what is opened (stores, encoded on demand or given; manifests)
  and how the stores line up with each other;
* :mod:`raddino.view.session`: every answer the page asks for (gallery pages, heatmaps,
  nearest studies, PCA colours, the figure), as plain data; the numbers come from
  :mod:`raddino.viz`;
* :mod:`raddino.view.server`: the HTTP routes (Werkzeug) and the server;
* ``static/``: the page itself, plain HTML, CSS and JavaScript (no build step).
"""

from raddino.view.server import serve_view, url_of
from raddino.view.session import ViewError, ViewSession

__all__ = ["ViewError", "ViewSession", "serve_view", "url_of"]
