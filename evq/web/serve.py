"""`evq web`: serve the dashboard with uvicorn, on loopback unless credentials are set."""

from __future__ import annotations

import socket
from collections.abc import Callable

import uvicorn

from ..errors import InvalidInput
from ..ledger import open_ledger
from .app import app
from .guard import Auth, refusal_to_listen

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8470


def serve(ledger_spec: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
          read_only: bool = False, ready: Callable[[str], None] | None = None) -> None:
    """Serve the dashboard of a ledger until interrupted. Refuses (InvalidInput) to
    listen beyond loopback without credentials, and to start on a ledger it cannot read;
    `ready` is told the address once those checks passed."""
    auth = Auth.from_env()
    refused = refusal_to_listen(host, auth)
    if refused is not None:
        raise InvalidInput(refused)
    ledger = open_ledger(ledger_spec)
    ledger.check_schema()  # a wrong path or URL is said now, not on the first page
    try:
        # Listening before saying so: whoever reads the address can connect at once.
        listening = socket.create_server(
            (host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        raise InvalidInput(f"evq web cannot listen on {host}:{port}: {exc.strerror}; "
                           "choose another --port or --host") from None
    if ready is not None:
        shown = f"[{host}]" if ":" in host else host
        ready(f"http://{shown}:{listening.getsockname()[1]}")
    server = uvicorn.Server(uvicorn.Config(app(ledger, read_only=read_only, auth=auth),
                                           log_level="warning", server_header=False))
    server.run(sockets=[listening])
