"""``cnnlab explore RUN``: the explorer of a run, as RUN/explorer.html (or served on 127.0.0.1)."""

from __future__ import annotations

import argparse

HELP = "explore what each layer of a trained run computed: click a pixel, see its sum (HTML)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a run folder made by 'cnnlab train'")
    parser.add_argument("--out", metavar="FILE",
                        help="the HTML file to write (default RUN/explorer.html)")
    parser.add_argument("--serve", action="store_true",
                        help="serve the run folder on 127.0.0.1 (a free port) and print the URL, "
                             "for browsers that block a page's live view from file://; Ctrl-C stops")
    parser.add_argument("--port", type=int, default=0, metavar="PORT",
                        help="with --serve: the port (default: any free one)")
    parser.add_argument("--no-open", action="store_true", help="do not open a browser")


def run(args) -> int:
    from cnnlab.viz.explorer.page import write_explorer_page
    from cnnlab.viz.explorer.serve import open_in_browser, serve_folder

    path = write_explorer_page(args.run, out=args.out)
    if not args.serve:
        print(path)
        if not args.no_open:
            open_in_browser(path.resolve().as_uri())
        return 0
    serve_folder(path.parent, path.name, port=args.port, open_browser=not args.no_open)
    return 0
