"""``ftspl serve``: an HTTP API and a browser page over a live shape index.

Starlette + uvicorn + python-multipart (the ``[serve]`` extra); no torch and no
pydantic, so the serving path is as lean as ``ftspl query``. Modules:

* :mod:`ftspl.serve.config` - the options and the bind policy (loopback, or a token);
* :mod:`ftspl.serve.uploads` - an uploaded photo through the same checks as ``ftspl query``;
* :mod:`ftspl.serve.live` - the index (through :mod:`ftspl.api`), followed by a background thread while writers run;
* :mod:`ftspl.serve.server` - the state the handlers share, the admission gate, the error answers;
* :mod:`ftspl.serve.routes` - the handlers; a query answers :class:`ftspl.results.QueryAnswer` as JSON;
* :mod:`ftspl.serve.app` - the route table, the guards (token, body cap) and the error handlers;
* ``static/`` - the page (HTML + JS + CSS, no build step, nothing from the network).
"""
