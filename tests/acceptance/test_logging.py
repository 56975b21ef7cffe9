"""evq is a library: it never configures logging, prints nothing below warnings unless
the application asks for it, and the application's logging configuration decides."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

APP = textwrap.dedent('''
    import asyncio, logging, sys
    import evq

    if sys.argv[2] == "debug":
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                            format="%(name)s %(levelname)s %(message)s")

    async def main():
        async with evq.Context(sys.argv[1]) as ctx:
            ctx.define("fine", lambda payload: payload)
            ctx.define("broken", lambda payload: 1 / 0, max_attempts=1)
            for i in range(20):
                await ctx.enqueue("fine", i)
            if sys.argv[3] == "with-error":
                await ctx.enqueue("broken", 0)
            await ctx.drain()

    asyncio.run(main())
''')


def run(tmp_path: Path, level: str, error: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "app.py"
    script.write_text(APP)
    return subprocess.run([sys.executable, str(script), str(tmp_path / "l.db"), level, error],
                          capture_output=True, text=True, timeout=60)


def test_an_application_that_configured_nothing_sees_nothing_for_healthy_jobs(tmp_path):
    done = run(tmp_path, "default", "none")
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")


def test_warnings_still_reach_an_unconfigured_application_on_stderr(tmp_path):
    done = run(tmp_path, "default", "with-error")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("evq.job_error ") and "ZeroDivisionError" in line
    assert "job='broken'" in line and "attempt=1" in line


def test_the_applications_logging_configuration_decides(tmp_path):
    done = run(tmp_path, "debug", "none")
    assert done.returncode == 0, done.stderr
    succeeded = [line for line in done.stderr.splitlines() if "evq.job_succeeded" in line]
    assert len(succeeded) == 20
    assert succeeded[0].startswith("evq.worker DEBUG evq.job_succeeded ")
