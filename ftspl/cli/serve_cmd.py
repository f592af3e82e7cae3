"""Body of ``ftspl serve``: check the options, load the model and index once, then run uvicorn."""

from __future__ import annotations

from ftspl.cli import console
from ftspl.engine.errors import FtsplError


def serve_cmd(cfg) -> None:
    """Refuse an unsafe bind before loading anything, load and warm, then listen until Ctrl-C."""
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

    live = LiveIndex(Home.resolve(cfg.home), cfg.poll_s, cfg.device)
    try:
        st = live.state()
        url = f"http://{cfg.host if ':' not in cfg.host else f'[{cfg.host}]'}:{cfg.port}/"

        class Server(uvicorn.Server):
            async def startup(self, sockets=None) -> None:
                await super().startup(sockets)
                if self.started:  # after the socket is bound: a caller can wait for this line
                    console.out(f"serving {st.count} shapes (model {live.lib.manifest.model_id}, generation "
                                f"{st.generation}) at {url}; {cfg.workers} queries at a time; Ctrl-C stops")

        config = uvicorn.Config(
            create_app(cfg, live), host=cfg.host, port=cfg.port, log_level="warning", access_log=False,
            server_header=False, timeout_graceful_shutdown=5, lifespan="on",
            limit_concurrency=max(64, 4 * (cfg.workers + cfg.queue)),  # open connections, beyond the query gate
        )
        server = Server(config)
        server.run()
        if not server.started:
            raise FtsplError(f"cannot listen on {cfg.host}:{cfg.port} (in use, or not an address of this machine)")
    finally:
        live.close()
