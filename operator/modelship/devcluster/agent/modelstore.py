"""`python -m modelship.devcluster.agent.modelstore`: the plane's static file server for models.

Files under `<state-dir>/models/` are served at http://127.0.0.1:<port>/<file>, so a
ModelService's `model.uri` can be a plain http:// URL and the real fetch init step downloads
it, as it would from any web server. Standard library only; one thread per request.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import sys
from pathlib import Path


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        sys.stderr.write(f"{self.address_string()} {format % args}\n")
        sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelship.devcluster.agent.modelstore",
                                     description="Serve a folder of model files over HTTP on 127.0.0.1.")
    parser.add_argument("--dir", type=Path, required=True, help="folder to serve")
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(_Handler, directory=str(args.dir))
    with http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler) as server:
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
