"""`evq tree`: a flow's current state read back by the real command, and what `evq
cancel` says when a parent takes its descendants along."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import evq
from evq import FlowJob


def run_evq(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("EVQ_DB", None)
    return subprocess.run([sys.executable, "-m", "evq", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=10)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stdout


async def blocked_flow(db: Path) -> evq.FlowNode:
    async with evq.Context(db, clock=evq.FakeClock()) as ctx:
        ctx.define("sync_db_status", lambda p: "synced")
        ctx.define("add_db_record", lambda p: {"row": 7})
        ctx.define("check_dns_status", lambda p: 1 / 0, max_attempts=2, backoff=evq.Fixed(0))
        ctx.define("create_dns_record", lambda p: {"change_id": "C-1"})
        root = await ctx.enqueue_flow(FlowJob("sync_db_status", children=[
            FlowJob("add_db_record", fail_parent_on_failure=False),
            FlowJob("check_dns_status", children=[FlowJob("create_dns_record")])]))
        await ctx.drain()
        return root


async def test_tree_shows_the_flow_and_the_child_it_is_blocked_by(tmp_path: Path):
    db = tmp_path / "flow.db"
    root = await blocked_flow(db)
    check_id = root.children[1].id
    leaf_id = root.children[1].children[0].id
    # Any job of the flow, by its short id, shows the whole tree from the root.
    lines = ok(run_evq("tree", leaf_id[-8:], "--db", db)).splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(f"sync_db_status#{root.id[-8:]}  queue=default  state=waiting")
    assert f"blocked_by=#{check_id[-8:]}" in lines[0]
    assert lines[1].startswith("├── add_db_record#") and 'result={"row": 7}' in lines[1]
    assert lines[2].startswith(f"└── check_dns_status#{check_id[-8:]}")
    assert "state=expired" in lines[2] and "attempt=2/2" in lines[2]
    assert "edge=failed" in lines[2] and "ZeroDivisionError" in lines[2]
    assert lines[3].startswith("    └── create_dns_record#") and "succeeded" in lines[3]

    tree = json.loads(ok(run_evq("tree", root.id, "--db", db, "--json")))
    assert tree["state"] == "waiting" and tree["blocked_by"] == check_id
    assert [c["name"] for c in tree["children"]] == ["add_db_record", "check_dns_status"]
    assert tree["children"][1]["edge"] == "failed"
    assert tree["children"][1]["children"][0]["result"] == {"change_id": "C-1"}

    # The parent's timeline tells the same story.
    history = ok(run_evq("history", root.id, "--db", db))
    assert "waits for" in history and "child #" in history and "failed" in history


async def test_cancel_of_a_parent_names_the_descendants_it_took(tmp_path: Path):
    db = tmp_path / "flow.db"
    async with evq.Context(db, clock=evq.FakeClock()) as ctx:
        ctx.define("parent", lambda p: None)
        ctx.define("leaf", lambda p: None)
        root = await ctx.enqueue_flow(FlowJob("parent", children=[
            FlowJob("parent", children=[FlowJob("leaf")]), FlowJob("leaf")]))
    out = ok(run_evq("cancel", root.id, "--db", db, "--reason", "gave up"))
    assert out.splitlines()[0] == f"cancelled {root.id}"
    assert out.splitlines()[1].startswith("also cancelled 3 job(s) of its flow: ")
    tree = json.loads(ok(run_evq("tree", root.id, "--db", db, "--json")))
    assert tree["state"] == "cancelled"
    assert ok(run_evq("verify", "--db", db)).startswith("ok")


def test_tree_of_an_unknown_job(tmp_path: Path):
    db = tmp_path / "l.db"
    ok(run_evq("migrate", "--db", db))
    result = run_evq("tree", "abcdef12", "--db", db)
    assert result.returncode == 3 and "no job with id" in result.stderr  # not found


async def test_tree_history_is_the_whole_flows_story_in_ledger_order(tmp_path: Path):
    db = tmp_path / "flow.db"
    root = await blocked_flow(db)
    ids = {root.id, root.children[0].id, root.children[1].id,
           root.children[1].children[0].id}
    lines = ok(run_evq("tree", root.children[0].id, "--db", db, "--history", "--json"))
    events = [json.loads(line) for line in lines.splitlines()]
    assert {e["job_id"] for e in events} == ids
    positions = [e["position"] for e in events]
    assert positions == sorted(positions)
    kinds = [e["kind"] for e in events]
    assert kinds.count("enqueue") == 4 and kinds.count("wait") == 2
    assert kinds.count("child") == 3 and kinds.count("ready") == 1  # the poll step's
    text = ok(run_evq("tree", root.id, "--db", db, "--history")).splitlines()
    assert len(text) == len(events)
    assert sum("waits for" in line for line in text) == 2
