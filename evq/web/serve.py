"""`evq web`: serve the dashboard with uvicorn, on loopback unless credentials are set."""

from __future__ import annotations

import uvicorn

from ..errors import InvalidInput
from ..ledger import open_ledger
from .app import app
from .guard import Auth, refusal_to_listen

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8470


def serve(ledger_spec: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
          read_only: bool = False) -> None:
    """Serve the dashboard of a ledger until interrupted. Refuses (InvalidInput) to
    listen beyond loopback without credentials, and to start on a ledger it cannot read."""
    auth = Auth.from_env()
    refused = refusal_to_listen(host, auth)
    if refused is not None:
        raise InvalidInput(refused)
    ledger = open_ledger(ledger_spec)
    ledger.check_schema()  # a wrong path or URL is said now, not on the first page
    uvicorn.run(app(ledger, read_only=read_only, auth=auth), host=host, port=port,
                log_level="warning", server_header=False)
