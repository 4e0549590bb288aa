"""``raddino view``: features stores in a local web page; click a patch, see where it matches."""

from __future__ import annotations

import argparse

from raddino.cli.options import (
    MODEL_SOURCES,
    add_command,
    add_device_argument,
    add_dtype_argument,
    add_progress_argument,
    positive_int,
)

HELP = "explore features stores in the browser: click a patch, see its similarity heatmaps"
DESCRIPTION = f"""{HELP}.

Starts a local web page over one or more encoders' features stores (written by raddino encode
--patch-tokens full, or by the evaluation commands' caches) and prints its address. Click an
image, then a patch of it: the page shows the cosine similarity of that patch's token to every
patch of the chosen images (the paper's Figure 2), the nearest studies by CLS or mean patch
token, the PCA colours of the patch tokens, and a second encoder side by side. The address
holds the query (a permalink); "save figure" downloads the PNG raddino similarity draws (and
writes it into --out when given).

Give stores, or --model with --images to encode them first (with progress) into --cache. The
first store's images are the gallery; --manifest adds its columns as labels and filters.
"""
EXAMPLES = """examples:
  raddino view image-only=features/ssl random=features/random --manifest cohort/manifest.csv
  raddino view --model rad-dino/ --model random:rad-dino/ --images scans/ --cache view-cache/
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "view", help=HELP, description=DESCRIPTION, examples=EXAMPLES)
    parser.add_argument(
        "stores",
        nargs="*",
        metavar="[NAME=]STORE",
        help="features store folders, each optionally named (NAME=STORE); the first one's "
        "images are the gallery",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[NAME=][random:]MODEL",
        help=f"encode --images with this encoder first ({MODEL_SOURCES}; random:PATH for a "
        "random-initialised copy); repeat it to compare encoders",
    )
    parser.add_argument(
        "--images",
        nargs="+",
        default=[],
        metavar="INPUT",
        help="images to encode with --model: files, folders or manifest CSVs (whose columns "
        "become labels)",
    )
    parser.add_argument(
        "--manifest",
        action="append",
        default=[],
        metavar="CSV",
        help="manifest whose columns label the images and filter the gallery (repeatable)",
    )
    parser.add_argument(
        "--cache",
        default=None,
        help="where --model writes its stores (default: a temporary folder, deleted on exit)",
    )
    parser.add_argument(
        "--image-size",
        type=positive_int,
        default=None,
        help="with --model: resize and crop to this size instead of the model's",
    )
    add_device_argument(parser)
    add_dtype_argument(
        parser,
        default="fp32",
        what="with --model, the encoder's precision",
        note="fp32 by default so that the heatmaps are the same on every machine",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=8, help="with --model: images per batch (8)"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="with --model: decoding processes (default: 2)"
    )
    add_progress_argument(parser)
    parser.add_argument(
        "--out",
        default=None,
        help='folder where "save figure" also writes its PNGs (default: the browser only '
        "downloads them)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only; anything else "
        "shows the images to the network)",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="port to listen on; 0 = a free one (default: 0)"
    )
    parser.set_defaults(run=run)


def stop_on_term(signum, frame) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    import signal
    import sys
    import tempfile
    from contextlib import ExitStack
    from pathlib import Path

    try:
        from raddino.view.server import is_loopback, serve_view, url_of
    except ImportError as error:  # Werkzeug missing or too old
        raise ValueError(f"{error}; pip install 'raddino[view]'") from None
    from raddino.view.session import ViewSession
    from raddino.view.sources import parse_named

    if not args.stores and not args.model:
        raise ValueError("give features stores, or --model with --images to encode some")
    if args.model and not args.images:
        raise ValueError("--model needs --images: the images to encode")
    if args.images and not args.model:
        raise ValueError("--images needs --model: the encoder to encode them with")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: expected 0 (a free port) to 65535")

    with ExitStack() as stack:
        stores = [parse_named(text) for text in args.stores]
        manifests = list(args.manifest)
        if args.model:
            from raddino.features.encode import EncodeOptions
            from raddino.view.sources import encode_stores

            cache = args.cache
            if cache is None:
                cache = stack.enter_context(tempfile.TemporaryDirectory(prefix="raddino-view-"))
            options = EncodeOptions(
                batch_size=args.batch_size,
                num_workers=args.workers,
                device=args.device,
                dtype=args.dtype,
                progress=not args.no_progress,
            )
            stores += encode_stores(args.model, args.images, cache, options, args.image_size)
            manifests += [p for p in args.images if Path(p).suffix.lower() == ".csv"]
        session = ViewSession(stores, manifests, figures=args.out)
        for store in session.encoders:
            if store.problem:
                print(f"raddino view: warning: {store.name}: {store.problem}", file=sys.stderr)
        server = serve_view(session, args.host, args.port)
        if not is_loopback(args.host):
            print(
                f"raddino view: warning: listening on {args.host}: anyone who can reach this "
                "machine can see these images",
                file=sys.stderr,
            )
        names = ", ".join(store.name for store in session.encoders)
        print(f"raddino view: {len(session.images)} images, encoders: {names}")
        print(f"open {url_of(server)}  (Ctrl-C stops)", flush=True)
        signal.signal(signal.SIGTERM, stop_on_term)  # stop as on Ctrl-C: the cache is removed
        server.serve_forever()  # returns on Ctrl-C, the socket closed
        print("raddino view: stopped")
    return 0
