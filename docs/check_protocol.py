#!/usr/bin/env python3
"""Checks docs/protocol.md with a plain AMQP client (pika), against a running runner.

Start a runner of the quickstart workflow first, for example

    INQUBO_PREFIX=inqubo cargo run --example quickstart -- --serve

then run this script. It triggers a run of `simple` exactly as docs/protocol.md says, follows
its events, checks their routing keys, headers and bodies against the document, and exits 0
when both last steps succeeded and `simple.run.succeeded` arrived. With `--map`, it also checks
a map (docs/protocol.md, "Maps") on workflow `thumbnails`, which a runner of the map example
must serve (`cargo run --example map -- --serve`). `--cleanup` only deletes the prefix's queues
and exchanges (for CI, which uses a throwaway prefix, once the runners have stopped).
"""

import argparse
import json
import sys
import time
import uuid

import pika

LAST_STEPS = {"load_data_to_external_system", "load_data_to_internal_system"}
STEPS = ["get_data", "process_data", *sorted(LAST_STEPS)]


def fail(message):
    print(f"protocol check FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def slot_of(run_id):
    """The join slot of a run: FNV-1a (32 bit) of the run id, modulo 64."""
    h = 0x811C9DC5
    for byte in run_id.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % 64


def cancel(ch, prefix, run_id, reason, timeout):
    """Asks the run join to cancel `run_id`, as docs/protocol.md says; returns its answer."""
    replies = ch.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
    ch.basic_publish(
        exchange=f"{prefix}.join",
        routing_key=f"simple._run.{slot_of(run_id)}",
        body=json.dumps({"reason": reason}),
        properties=pika.BasicProperties(
            headers={"run-id": run_id, "join-cancel": True, "reply-to": replies},
            delivery_mode=2, content_type="application/json"),
        mandatory=True,
    )
    for method, props, body in ch.consume(replies, auto_ack=True, inactivity_timeout=timeout):
        if method is None:
            fail(f"no answer to the cancel request for {run_id} within {timeout} s")
        if (props.headers or {}).get("run-id") == run_id:
            ch.cancel()
            return json.loads(body)
    fail("the answer queue closed")


MAP_STEPS = ["list_files", "resize", "index"]


def cleanup(ch, prefix):
    for workflow, steps, joins in (("simple", STEPS, ["_run"]),
                                   ("thumbnails", MAP_STEPS, ["_run", "index"])):
        for step in steps + ["parked", "redelivered", "run-states", "scheduler", "schedules"]:
            ch.queue_delete(f"{prefix}.{workflow}.{step}")
        for join in joins:
            for shard in range(4):
                for kind in ("shard", "state", "journal"):
                    ch.queue_delete(f"{prefix}.{workflow}.{join}.{kind}-{shard}")
    ch.exchange_delete(f"{prefix}.join")
    ch.queue_delete(f"{prefix}.registry")
    for tier in range(25):
        ch.queue_delete(f"{prefix}.delay.{tier}")
        ch.exchange_delete(f"{prefix}.delay.{tier}")
    ch.exchange_delete(f"{prefix}.retry")
    ch.exchange_delete(prefix)
    print(f"deleted the topology of prefix {prefix}")


def trigger(ch, exchange, routing_key, body, run_id, deadline):
    """Publishes a trigger with `mandatory`. A runner declares a step's queue a moment before
    it binds it to the trigger's key: until then the broker returns the trigger (delivered
    nowhere), so it is sent again until `deadline`."""
    while True:
        try:
            ch.basic_publish(
                exchange=exchange,
                routing_key=routing_key,
                body=body,
                properties=pika.BasicProperties(
                    headers={"run-id": run_id}, delivery_mode=2,
                    content_type="application/json"),
                mandatory=True,
            )
            return
        except pika.exceptions.UnroutableError:
            if time.monotonic() > deadline:
                fail(f"the trigger of {run_id} stayed unroutable: no runner bound {routing_key}")
            time.sleep(0.2)


def check_map(ch, prefix, timeout):
    """A run of `thumbnails` (list_files, then resize once per file, then index), as
    docs/protocol.md's "Maps" says: every event of an element carries `map-index` and
    `map-size`, its message_id names `resize[<index>]`, and the run ends once with the index
    of every thumbnail."""
    files = 3
    deadline = time.monotonic() + timeout
    while True:
        try:
            ch.queue_declare(f"{prefix}.thumbnails.list_files", passive=True)
            break
        except pika.exceptions.ChannelClosedByBroker:
            if time.monotonic() > deadline:
                fail("no runner declared workflow thumbnails")
            time.sleep(0.2)
            ch = ch.connection.channel()
            ch.confirm_delivery()
    events = ch.queue_declare(queue="", exclusive=True).method.queue
    for key in ["thumbnails.step.#", "thumbnails.run.succeeded", "thumbnails.run.failed"]:
        ch.queue_bind(events, prefix, routing_key=key)
    run_id = str(uuid.uuid4())
    trigger(ch, prefix, "thumbnails.run.triggered",
            json.dumps({"folder": "check", "files": files}), run_id, deadline)
    elements = set()
    for method, props, body in ch.consume(events, auto_ack=True, inactivity_timeout=timeout):
        if method is None:
            fail(f"no map event for {timeout} s; elements done: {sorted(elements)}")
        headers = props.headers or {}
        if headers.get("run-id") != run_id:
            continue
        key = method.routing_key
        payload = json.loads(body)
        print(key, headers.get("map-index"), json.dumps(payload))
        if key == "thumbnails.run.succeeded":
            if elements != set(range(files)):
                fail(f"run.succeeded before every element: {sorted(elements)}")
            expected = {"index": {"thumbnails": files, "bytes": 150150,
                                  "first": "check/photo-0.thumb.jpg"}}
            if payload != expected:
                fail(f"thumbnails run.succeeded body is {payload}")
            break
        if key == "thumbnails.run.failed":
            fail(f"the map run failed: {payload}")
        step, event = key.split(".")[2:4]
        if step != "resize":
            if "map-index" in headers:
                fail(f"{key} carries map-index but {step} is no map")
            continue
        index, size = headers.get("map-index"), headers.get("map-size")
        if not isinstance(index, int) or size != files or not 0 <= index < files:
            fail(f"{key}: map-index/map-size are {index!r}/{size!r}")
        expected_id = f"{run_id}:thumbnails:resize[{index}]:{event}:{headers.get('attempt')}"
        if props.message_id != expected_id:
            fail(f"{key}: message_id {props.message_id!r}, expected {expected_id!r}")
        if event == "succeeded":
            if index in elements:
                fail(f"element {index} succeeded twice")
            elements.add(index)
            if payload != {"path": f"check/photo-{index}.thumb.jpg", "bytes": 50000 + 50 * index}:
                fail(f"element {index} output is {payload}")
    ch.cancel()
    print(f"map checked: run {run_id}, {files} elements, each once, reduced in order")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2f")
    parser.add_argument("--prefix", default="inqubo")
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--cleanup", action="store_true")
    parser.add_argument("--map", action="store_true",
                        help="also check a map on workflow thumbnails (the map example)")
    parser.add_argument("--wait-for-runner", type=float, default=0,
                        help="seconds to wait for a runner to declare the workflow")
    args = parser.parse_args()
    exchange = args.prefix

    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    ch = conn.channel()
    if args.cleanup:
        cleanup(ch, args.prefix)
        conn.close()
        return
    ch.confirm_delivery()

    # Wait until a runner has declared the workflow (its first step's queue exists).
    deadline = time.monotonic() + args.wait_for_runner
    while True:
        try:
            ch.queue_declare(f"{args.prefix}.simple.get_data", passive=True)
            break
        except pika.exceptions.ChannelClosedByBroker:
            if time.monotonic() > deadline:
                fail("no runner declared workflow simple")
            time.sleep(0.2)
            ch = conn.channel()
            ch.confirm_delivery()

    # Exclusive: deleted with the connection (not auto-delete: the check consumes it twice).
    events = ch.queue_declare(queue="", exclusive=True).method.queue
    # As docs/protocol.md's example: keys that leave the trigger out.
    for key in ["simple.step.#", "simple.run.succeeded", "simple.run.failed",
                "simple.run.cancelled", "simple.run.duplicate"]:
        ch.queue_bind(events, exchange, routing_key=key)

    # An unknown workflow is returned to a mandatory publisher.
    try:
        ch.basic_publish(exchange, "nobody-runs-this.run.triggered", b"{}",
                         pika.BasicProperties(headers={"run-id": "x"}), mandatory=True)
        fail("a trigger for an unknown workflow was not returned")
    except pika.exceptions.UnroutableError:
        pass

    run_id = str(uuid.uuid4())
    trigger(ch, exchange, "simple.run.triggered", json.dumps({"fail_times": 1}), run_id,
            max(deadline, time.monotonic() + 5))

    seen = []
    remaining = set(LAST_STEPS)
    for method, props, body in ch.consume(events, auto_ack=True, inactivity_timeout=args.timeout):
        if method is None:
            fail(f"no event for {args.timeout} s; seen {seen}")
        headers = props.headers or {}
        if headers.get("run-id") != run_id:
            continue
        key = method.routing_key
        payload = json.loads(body)
        print(key, headers.get("attempt"), json.dumps(payload))
        seen.append(key)
        if props.content_type != "application/json" or props.delivery_mode != 2:
            fail(f"{key}: content_type/delivery_mode are {props.content_type}/{props.delivery_mode}")
        workflow, kind, *rest = key.split(".")
        if workflow != "simple":
            fail(f"unexpected workflow in {key}")
        if kind == "run":
            if rest != ["triggered"] and headers.get("run-generation") != 1:
                fail(f"{key}: run-generation header is {headers.get('run-generation')!r}")
            if rest == ["triggered"]:
                if payload != {"fail_times": 1}:
                    fail(f"trigger body is {payload}")
                continue
            if rest == ["succeeded"]:
                if remaining:
                    fail(f"run.succeeded before {remaining}")
                if set(payload) != LAST_STEPS:
                    fail(f"run.succeeded body is {payload}")
                if props.message_id != f"{run_id}:simple:run:succeeded":
                    fail(f"run.succeeded message_id is {props.message_id!r}")
                break
            fail(f"unexpected run event {key} {payload}")
        if kind != "step" or len(rest) != 2:
            fail(f"routing key {key} is not <workflow>.step.<step>.<event>")
        step, event = rest
        attempt = headers.get("attempt")
        if not isinstance(attempt, int) or attempt < 1:
            fail(f"{key}: attempt header is {attempt!r}")
        expected_id = f"{run_id}:simple:{step}:{event}:{attempt}"
        if props.message_id != expected_id:
            fail(f"{key}: message_id {props.message_id!r}, expected {expected_id!r}")
        if event == "started":
            if payload != {"attempt": attempt}:
                fail(f"{key}: body {payload}")
        elif event == "retrying":
            if set(payload) != {"error", "attempt", "next_attempt", "delay_ms"}:
                fail(f"{key}: body {payload}")
            if payload["next_attempt"] != attempt + 1 or payload["delay_ms"] != 1000:
                fail(f"{key}: body {payload}")
        elif event == "failed":
            fail(f"{step} failed: {payload}")
        elif event == "succeeded":
            remaining.discard(step)
        else:
            fail(f"unknown event {event}")

    if "simple.step.process_data.retrying" not in seen:
        fail("the retry of process_data was not seen")
    order = [k for k in seen if k.startswith("simple.step.process_data")]
    if order != [
        "simple.step.process_data.started",
        "simple.step.process_data.retrying",
        "simple.step.process_data.started",
        "simple.step.process_data.succeeded",
    ]:
        fail(f"process_data events out of order: {order}")

    ch.cancel()  # one consumer generator at a time
    # Cancelling a run that ended is refused, and nothing is published.
    answer = cancel(ch, exchange, run_id, "too late", args.timeout)
    if answer != {"outcome": "refused", "ended": "succeeded"}:
        fail(f"cancel of a finished run answered {answer}")

    # A run cancelled before it is triggered ends with run.cancelled, once.
    early = str(uuid.uuid4())
    answer = cancel(ch, exchange, early, "changed my mind", args.timeout)
    if answer != {"outcome": "cancelled"}:
        fail(f"cancel of a new run answered {answer}")
    for method, props, body in ch.consume(events, auto_ack=True, inactivity_timeout=args.timeout):
        if method is None:
            fail(f"no run.cancelled for {early}")
        if (props.headers or {}).get("run-id") != early:
            continue
        if method.routing_key != "simple.run.cancelled":
            fail(f"unexpected {method.routing_key} for the cancelled run")
        if json.loads(body) != {"reason": "changed my mind"}:
            fail(f"run.cancelled body is {body!r}")
        if props.message_id != f"{early}:simple:run:cancelled":
            fail(f"run.cancelled message_id is {props.message_id!r}")
        ch.cancel()
        break
    print(f"cancel checked: refused for {run_id}, accepted before the trigger of {early}")

    # A second trigger of a run id starts nothing: run.duplicate says how the run ended.
    for again, state in ((run_id, "succeeded"), (early, "cancelled")):
        ch.basic_publish(
            exchange=exchange,
            routing_key="simple.run.triggered",
            body=json.dumps({"fail_times": 0}),
            properties=pika.BasicProperties(
                headers={"run-id": again}, delivery_mode=2, content_type="application/json"),
            mandatory=True,
        )
        for method, props, body in ch.consume(events, auto_ack=True,
                                              inactivity_timeout=args.timeout):
            if method is None:
                fail(f"no run.duplicate for the second trigger of {again}")
            if (props.headers or {}).get("run-id") != again:
                continue
            key = method.routing_key
            if key == "simple.run.triggered":
                continue
            if key != "simple.run.duplicate":
                fail(f"a second trigger of {again} published {key}: it started something")
            if json.loads(body) != {"state": state}:
                fail(f"run.duplicate body is {body!r}, expected state {state}")
            if props.message_id != f"{again}:simple:run:duplicate":
                fail(f"run.duplicate message_id is {props.message_id!r}")
            ch.cancel()
            break
    print(f"duplicate triggers checked: {run_id} (succeeded) and {early} (cancelled) started nothing")

    # A delayed trigger: through the delay tiers, its delay spelled in 100 ms ticks.
    later = str(uuid.uuid4())
    ticks = 15  # 1.5 s = 0b1111: tiers 3, 2, 1 and 0
    bits = ".".join("1" if ticks & (1 << tier) else "0" for tier in reversed(range(25)))
    sent = time.monotonic()
    ch.basic_publish(
        exchange=f"{args.prefix}.delay.{ticks.bit_length() - 1}",
        routing_key=f"{bits}.simple.run.triggered",
        body=json.dumps({"fail_times": 0}),
        properties=pika.BasicProperties(
            headers={"run-id": later}, delivery_mode=2, content_type="application/json",
            message_id=f"{later}:simple:triggered"),
        mandatory=True,
    )
    started_after = None
    for method, props, body in ch.consume(events, auto_ack=True, inactivity_timeout=args.timeout):
        if method is None:
            fail(f"the delayed trigger of {later} never started its run")
        if (props.headers or {}).get("run-id") != later:
            continue
        if method.routing_key == "simple.step.get_data.started" and started_after is None:
            started_after = time.monotonic() - sent
        if method.routing_key == "simple.run.succeeded":
            ch.cancel()
            break
    if started_after is None or started_after < 1.4:
        fail(f"the delayed run started after {started_after} s, not after 1.5 s")
    print(f"delayed trigger checked: {later} started after {started_after:.2f} s (1.5 s asked)")

    if args.map:
        check_map(ch, args.prefix, args.timeout)

    conn.close()
    print(f"protocol check passed: {len(seen)} events for run {run_id}")


if __name__ == "__main__":
    main()
