"""A tenant's client that never touches HTTP: it submits a task and a goal
to Colony's NATS API by request-reply, follows the task's events and
result on its own subjects, and checks every message against the JSON
Schemas Colony publishes (subjects/schema/), which is all it knows of
Colony.

Environment: NATS_URL, NATS_USER (tenant-<t>), NATS_PASSWORD_FILE, TENANT,
OTHER_TENANT, SCHEMA_DIR. Prints one JSON line of what it saw; exits
non-zero with the reason on the first thing that is not as published.
"""

import asyncio
import json
import os
import pathlib
import re
import sys
import uuid

import jsonschema
import nats
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

SCHEMAS = pathlib.Path(os.environ["SCHEMA_DIR"])
TENANT = os.environ["TENANT"]
OTHER = os.environ["OTHER_TENANT"]


def schema(name):
    return json.loads((SCHEMAS / name).read_text())


def check(name, value):
    """Validate `value` against the published schema `name`."""
    try:
        jsonschema.validate(value, schema(name))
    except jsonschema.ValidationError as e:
        fail(f"{name}: {e.message} in {json.dumps(value)[:400]}")
    return value


def event_of(msg):
    """A message of colony.events.<tenant>.>: a goal's event
    (…<goal>.goal.<kind>) or a task's (…<goal or _>.<task>.<kind>)."""
    tokens = msg.subject.split(".")
    if len(tokens) == 6 and tokens[4] == "goal":
        return "goal", check("goal_event.v1.json", json.loads(msg.data))
    return "task", check("event.v2.json", json.loads(msg.data))


def fail(why):
    print(f"FAIL: {why}", file=sys.stderr)
    sys.exit(1)


def api(call):
    return f"colony.api.{TENANT}.{call}"


async def main():
    errors = []

    async def on_error(e):
        errors.append(str(e))

    user = os.environ["NATS_USER"]
    password = pathlib.Path(os.environ["NATS_PASSWORD_FILE"]).read_text().strip()
    nc = await nats.connect(
        os.environ["NATS_URL"],
        user=user,
        password=password,
        inbox_prefix=f"_INBOX_{user}",
        error_cb=on_error,
        allow_reconnect=False,
    )
    seen = {"calls": 0}

    async def call(name, body, **kw):
        """One call of the colony service, counted."""
        seen["calls"] += 1
        return await nc.request(api(name), body, timeout=10, **kw)

    # Listen to our own results and events before submitting, so that a
    # fast task's messages are not missed.
    results = await nc.subscribe(f"colony.results.{TENANT}.>")
    events = await nc.subscribe(f"colony.events.{TENANT}.>")

    # Submit a task: the body is a TaskSubmission.
    submission = check(
        "task_submission.v1.json",
        {"role": "shell", "input": {"command": "echo over-nats-only"}},
    )
    key = f"py-{uuid.uuid4()}"
    reply = await call(
        "tasks.submit",
        json.dumps(submission).encode(),
        headers={"Idempotency-Key": key},
    )
    if reply.headers and "Nats-Service-Error" in reply.headers:
        fail(f"submit refused: {reply.headers} {reply.data!r}")
    accepted = check("task_accepted.v1.json", json.loads(reply.data))
    task_id = accepted["id"]
    if not accepted["created"]:
        fail(f"a new submission was not created: {accepted}")

    # The same key again: the same task, not a second one.
    # The same key again (in another case): the same task, not a second.
    again = await call(
        "tasks.submit",
        json.dumps(submission).encode(),
        headers={"idempotency-key": key},
    )
    again = check("task_accepted.v1.json", json.loads(again.data))
    if again["id"] != task_id or again["created"]:
        fail(f"a retried submission made another task: {again} vs {accepted}")

    # Follow it to its result, on our own subjects only.
    result = None
    event_kinds = []
    deadline = asyncio.get_running_loop().time() + 90
    while result is None:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            fail(f"no result for task {task_id} within 90 s; events {event_kinds}")
        try:
            msg = await results.next_msg(timeout=min(left, 1.0))
            view = check("task_view.v1.json", json.loads(msg.data))
            if view["id"] == task_id:
                result = view
        except NatsTimeout:
            pass
        while True:
            try:
                ev = await events.next_msg(timeout=0.01)
            except NatsTimeout:
                break
            kind, body = event_of(ev)
            if kind == "task" and body["task_id"] == task_id:
                event_kinds.append(body["kind"])
    if result["state"] != "done":
        fail(f"the task ended {result['state']}: {result}")
    if "over-nats-only" not in json.dumps(result.get("result")):
        fail(f"the result lacks the task's output: {result}")
    # Drain the rest of its events.
    while True:
        try:
            ev = await events.next_msg(timeout=0.5)
        except NatsTimeout:
            break
        kind, body = event_of(ev)
        if kind == "task" and body["task_id"] == task_id:
            event_kinds.append(body["kind"])
    if not event_kinds:
        fail("no event of the task arrived on colony.events.<tenant>.>")
    if "state" not in event_kinds:
        fail(f"no state event of the task: {event_kinds}")
    seen["task"] = {"id": task_id, "state": result["state"], "events": event_kinds}

    # Read it back by id.
    got = await call("tasks.get", json.dumps({"id": task_id}).encode())
    got = check("task_view.v1.json", json.loads(got.data))
    if got["state"] != "done":
        fail(f"tasks.get says {got['state']}")

    # A goal: the body is a GoalSubmission.
    goal = check(
        "goal_submission.v1.json",
        {"title": "A goal over NATS", "acceptance": "it was accepted"},
    )
    reply = await call("goals.submit", json.dumps(goal).encode())
    if reply.headers and "Nats-Service-Error" in reply.headers:
        fail(f"goal refused: {reply.headers} {reply.data!r}")
    goal_accepted = check("goal_accepted.v1.json", json.loads(reply.data))
    view = await call("goals.get", json.dumps({"id": goal_accepted["id"]}).encode())
    view = check("goal_view.v1.json", json.loads(view.data))
    if view["id"] != goal_accepted["id"] or view["tenant"] != TENANT:
        fail(f"goals.get answered another goal: {view['id']}")
    # Its events arrive on our subjects too, as the goal-event schema says.
    goal_events = []
    for _ in range(20):
        try:
            ev = await events.next_msg(timeout=0.5)
        except NatsTimeout:
            break
        kind, body = event_of(ev)
        if kind == "goal" and body["goal_id"] == goal_accepted["id"]:
            goal_events.append(body["kind"])
    if not goal_events:
        fail("no event of the goal arrived on colony.events.<tenant>.>")
    seen["goal"] = {"id": goal_accepted["id"], "state": view["state"], "events": goal_events}

    # A long task, cancelled over NATS.
    long = await call("tasks.submit", json.dumps({"role": "shell", "input": {"command": "sleep 60"}}).encode())
    long = check("task_accepted.v1.json", json.loads(long.data))
    cancelled = await call("tasks.cancel", json.dumps({"id": long["id"]}).encode())
    cancelled = check("task_view.v1.json", json.loads(cancelled.data))
    if cancelled["state"] != "cancelled":
        fail(f"tasks.cancel left the task {cancelled['state']}")
    seen["cancelled"] = cancelled["id"]

    # Refusals: one sentence, with the services protocol's headers.
    refusals = {}
    for name, body, want in [
        ("tasks.submit", b"not json", "400"),
        # A refusal quoting a key with a line break: the header holds none.
        ("tasks.submit", json.dumps({"role": "shell", "input": {}, "a\r\nb": 1}).encode(), "400"),
        ("tasks.cancel", json.dumps({"id": task_id}).encode(), "409"),
        ("tasks.submit", json.dumps({"role": "wizard", "input": {}}).encode(), "422"),
        ("tasks.get", json.dumps({"id": str(uuid.uuid4())}).encode(), "404"),
        ("tasks.get", b"{}", "400"),
        ("goals.submit", json.dumps({"title": ""}).encode(), "400"),
    ]:
        r = await call(name, body)
        code = (r.headers or {}).get("Nats-Service-Error-Code")
        err = check("api_error.v1.json", json.loads(r.data))
        one_line = re.sub(r"[\x00-\x1f\x7f]", " ", err["error"])
        if code != want or not err["error"] or (r.headers or {}).get("Nats-Service-Error") != one_line:
            fail(f"{name} {body[:40]!r}: code {code}, headers {r.headers}, body {err}")
        refusals[f"{name} {body[:20].decode(errors='replace')}"] = code

    # Another tenant's API and the discovery subjects are not ours: the
    # server refuses the publish, so no answer comes.
    for subject in [f"colony.api.{OTHER}.tasks.submit", "$SRV.PING", "$SRV.INFO.colony"]:
        try:
            await nc.request(subject, json.dumps(submission).encode(), timeout=2)
            fail(f"{subject} answered a tenant of {TENANT}")
        except (NatsTimeout, NoRespondersError):
            pass
    await asyncio.sleep(0.2)
    violations = [e.lower() for e in errors if "permissions violation" in e.lower()]
    for subject in [f"colony.api.{OTHER}.tasks.submit", "$srv.ping", "$srv.info.colony"]:
        if not any(subject.lower() in e for e in violations):
            fail(f"the server did not refuse {subject}: {errors}")
    seen["refusals"] = refusals
    seen["permission_violations"] = len(violations)
    await nc.close()
    print(json.dumps(seen))


asyncio.run(main())
