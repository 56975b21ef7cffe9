"""The README's picture of the dashboard: a ledger with an hour of made-up traffic, the
overview served by `evq web`'s app and photographed in headless Chromium.

    python tools/screenshot_web.py [--out docs/dashboard.png] [--chromium /usr/bin/chromium]

The ledger is built on a fake clock that runs through the last hour, minute by minute:
three queues with a load that rises and falls, a few attempts that fail and are retried,
some that fail for good, then jobs left waiting. Needs the `web` and `test` extras
(Playwright) and Chromium (Debian's `chromium`). Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import random
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvicorn

import evq
import evq.web

MINUTES = 60


async def _traffic(db: Path) -> None:
    chance = random.Random(7)
    clock = evq.FakeClock(start=time.time() - MINUTES * 60)

    async def send(payload: Any) -> Any:
        clock.advance(chance.uniform(0.02, 0.4))  # how long it "ran"
        if chance.random() < 0.04:
            raise ConnectionError("smtp.example.org refused the connection")
        return {"sent": payload["to"]}

    async def resize(payload: Any) -> Any:
        clock.advance(chance.uniform(0.1, 1.5))
        if chance.random() < 0.08:
            raise ValueError(f"not an image: {payload['file']}")
        return {"width": 640}

    async def report(payload: Any) -> Any:
        return {"rows": chance.randint(10, 900)}

    async with evq.Context(db, clock=clock) as ctx:
        ctx.define("send_email", send, queue="mail", max_attempts=3,
                   backoff=evq.Fixed(20))
        ctx.define("resize", resize, queue="images", max_attempts=1)
        ctx.define("nightly_report", report, queue="reports", repeat=3600)
        await ctx.deploy()
        begun = clock.now()
        for minute in range(MINUTES):
            load = 12 + 10 * math.sin(minute / 9) + chance.randint(0, 6)
            for n in range(int(load)):
                await ctx.enqueue("send_email", {"to": f"user{minute}-{n}@example.org"})
            for n in range(int(load / 3)):
                await ctx.enqueue("resize", {"file": f"photo-{minute}-{n}.jpg"})
            if minute % 20 == 0:
                await ctx.enqueue("nightly_report", {"day": minute})
            waited = chance.uniform(1, 12)  # before a worker comes by
            clock.advance(waited)
            await ctx.drain()
            clock.set(max(clock.now(), begun + (minute + 1) * 60))  # the next minute
        for n in range(40):
            await ctx.enqueue("send_email", {"to": f"waiting{n}@example.org"})
        for n in range(12):
            await ctx.enqueue("resize", {"file": f"queued-{n}.jpg"})
        await ctx.orchestrator().tick()


async def _photograph(db: Path, out: Path, chromium: str) -> None:
    from playwright.async_api import async_playwright

    listening = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(evq.web.app(db), log_level="warning",
                                           lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[listening]))
    try:
        async with async_playwright() as driver:
            browser = await driver.chromium.launch(
                executable_path=chromium,
                args=["--headless", "--no-sandbox", "--disable-gpu",
                      "--disable-background-networking"])
            tab = await browser.new_page(viewport={"width": 1200, "height": 860})
            await tab.goto(f"http://127.0.0.1:{listening.getsockname()[1]}/")
            await tab.screenshot(path=str(out), full_page=False)
            await browser.close()
    finally:
        server.should_exit = True
        await serving


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    # The made-up failures are logged as warnings: not wanted on this tool's output.
    logging.getLogger("evq").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "shop.db"
        asyncio.run(_traffic(db))
        asyncio.run(_photograph(db, args.out, args.chromium))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
