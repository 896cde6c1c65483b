#!/usr/bin/env python3
"""Publish and follow RMB topics through the local rmb-peer's Redis.

Only redis-py is needed (Debian: python3-redis). The JSON is the one of
docs/protocol.md, "Topics": requests on msgbus.system.topics, answers on
the request's ret queue, events on the queue the subscription names.

Follow the topics of twin 42 matching alerts/# and print events as they
come (Ctrl-C unsubscribes):

    python3 pubsub.py subscribe --redis redis://localhost:6379/0 --twin 42 --topic 'alerts/#'

Publish on one of this twin's topics:

    python3 pubsub.py publish --redis redis://localhost:6379/0 --topic alerts/disk --data '97% full'

subscribe prints "<owner> <topic> <payload>" per event; publish prints
"<subscribers> <sent>". Both exit 1 when the peer refuses, naming why.
"""

import argparse
import base64
import json
import signal
import sys
import uuid

import redis

TOPICS_QUEUE = "msgbus.system.topics"


def b64(data: bytes) -> str:
    return base64.standard_b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.standard_b64decode(text or "")


def request(r: redis.Redis, msg: dict) -> dict:
    """Push a topic request and return the decoded result, or exit 1."""
    ref = str(uuid.uuid4())
    ret = "msgbus.reply." + ref
    msg.update({"ver": 1, "ref": ref, "ret": ret})
    r.lpush(TOPICS_QUEUE, json.dumps(msg))
    got = r.brpop(ret, timeout=60)
    if got is None:
        sys.exit("no answer from rmb-peer within 60s (is it running?)")
    answer = json.loads(got[1])
    if answer.get("err"):
        print("error %d %s" % (answer["err"]["code"], answer["err"]["message"]), file=sys.stderr)
        sys.exit(1)
    return json.loads(unb64(answer["dat"]))


def publish(r: redis.Redis, args) -> None:
    res = request(r, {"op": "publish", "topic": args.topic, "dat": b64(args.data.encode()),
                      "public": args.public, "confirm": args.confirm, "exp": args.ttl})
    print(res["subscribers"], res["sent"])


def subscribe(r: redis.Redis, args) -> None:
    queue = args.queue or "pubsub.py." + str(uuid.uuid4())
    request(r, {"op": "subscribe", "twin": args.twin, "topic": args.topic, "queue": queue,
                "level": args.level, "lease": args.lease})
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    seen = 0
    try:
        while not stop and (args.count == 0 or seen < args.count):
            got = r.brpop(queue, timeout=1)
            if got is None:
                continue
            ev = json.loads(got[1])
            seen += 1
            print(ev["owner"], ev["topic"], unb64(ev["dat"]).decode(errors="replace"), flush=True)
    finally:
        request(r, {"op": "unsubscribe", "twin": args.twin, "topic": args.topic, "queue": queue})
        r.delete(queue)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("publish")
    p.add_argument("--topic", required=True)
    p.add_argument("--data", default="")
    p.add_argument("--public", action="store_true")
    p.add_argument("--confirm", action="store_true")
    p.add_argument("--ttl", type=int, default=60)
    s = sub.add_parser("subscribe")
    s.add_argument("--twin", type=int, required=True)
    s.add_argument("--topic", required=True)
    s.add_argument("--queue", default="")
    s.add_argument("--level", default="at-most-once", choices=["at-most-once", "confirmed"])
    s.add_argument("--lease", type=int, default=300)
    s.add_argument("--count", type=int, default=0, help="exit after this many events")
    for q in (p, s):
        q.add_argument("--redis", default="redis://localhost:6379/0")
    args = ap.parse_args()
    r = redis.Redis.from_url(args.redis)
    publish(r, args) if args.mode == "publish" else subscribe(r, args)


if __name__ == "__main__":
    main()
