"""Body of ``ftspl serve``: check the options, bind, load the model and index once, then run uvicorn."""

from __future__ import annotations

import errno
import socket

from ftspl.cli import console
from ftspl.engine.errors import FtsplError


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything is loaded: a taken port fails in a second, in one line."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, IndexError) as exc:
        raise FtsplError(f"--host {host}: not an address of this machine ({exc})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        fix = "pick another --port" if exc.errno == errno.EADDRINUSE else "is --host an address of this machine?"
        raise FtsplError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; {fix}") from None
    return sock


def serve_cmd(cfg) -> None:
    """Refuse an unsafe bind, bind, load and warm, then listen until Ctrl-C."""
    cfg.check()
    try:
        import multipart  # noqa: F401  (python-multipart)
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise FtsplError(f"serve needs the [serve] extra ({exc.name} is missing): pip install 'ftspl[serve]'") from None
    from ftspl.engine.home import Home
    from ftspl.serve.app import create_app
    from ftspl.serve.live import LiveIndex

    sock = bind(cfg.host, cfg.port)
    try:
        live = LiveIndex(Home.resolve(cfg.home), cfg.poll_s, cfg.device)
    except BaseException:
        sock.close()
        raise
    try:
        st = live.state()
        host, port = sock.getsockname()[:2]
        url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"

        class Server(uvicorn.Server):
            async def startup(self, sockets=None) -> None:
                await super().startup(sockets)
                if self.started:  # a caller can wait for this line: the socket takes connections
                    console.out(f"serving {st.count} shapes (model {live.lib.manifest.model_id}, generation "
                                f"{st.generation}) at {url}; {cfg.workers} queries at a time; Ctrl-C stops")

        config = uvicorn.Config(
            create_app(cfg, live), log_level="warning", access_log=False, server_header=False,
            timeout_graceful_shutdown=5, lifespan="on",
            limit_concurrency=max(64, 4 * (cfg.workers + cfg.queue)),  # open connections, beyond the query gate
        )
        Server(config).run(sockets=[sock])
    finally:
        live.close()
        sock.close()
