"""evq web: the operator's dashboard, an ASGI app (`pip install 'evq[web]'`).

`evq.web.app(ctx_or_ledger)` is the app, to serve with `evq web` or to mount inside an
application of one's own; it reads and acts only through the ledger interface, so it
works on SQLite and PostgreSQL alike."""

from __future__ import annotations

from .app import app

__all__ = ["app"]
