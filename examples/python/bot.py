#!/usr/bin/env python3
"""A tiny calculator service and caller speaking the rmb-peer Redis API.

Only redis-py is needed (Debian: python3-redis). The JSON is exactly the
one of docs/protocol.md section 9, so this works with any RMB peer.

Serve calc.add, calc.mul and calc.div on the twin whose peer uses REDIS:

    python3 bot.py serve --redis redis://localhost:6379/0

With --consumer NAME the service takes requests with acknowledged
delivery (at-least-once): a request stays in msgbus.system.taken.NAME
until its answer is pushed, and if the process dies holding it, the peer
gives it to another consumer once the lease (--visibility seconds) runs
out. Each process needs a NAME of its own:

    python3 bot.py serve --redis redis://localhost:6379/0 --consumer calc-1

Call a twin's calculator through the local peer and print the result:

    python3 bot.py call --redis redis://localhost:6379/0 --dst 42 calc.add 1 2 3

The caller prints one line per destination: "<twin> <result>" or
"<twin> error <code> <message>", and exits 1 if any answer is an error.
"""

import argparse
import base64
import json
import signal
import sys
import time
import uuid

try:
    import redis
except ImportError:
    sys.stderr.write(
        "bot.py needs redis-py, the Redis client for Python, and this python3 "
        "cannot import it.\nInstall it with:\n"
        "    apt-get install python3-redis     # Debian, Ubuntu\n"
        "or  python3 -m pip install redis      # in a virtualenv\n"
    )
    sys.exit(2)

LOCAL_QUEUE = "msgbus.system.local"
REPLY_QUEUE = "msgbus.system.reply"
TAKEN_PREFIX = "msgbus.system.taken."  # + consumer: its processing list
LEASES = "msgbus.system.leases"  # consumer -> lease expiry, unix ms
COMMANDS = ("calc.add", "calc.mul", "calc.div")


def b64(data: bytes) -> str:
    return base64.standard_b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.standard_b64decode(text or "")


def calculate(cmd: str, numbers):
    if cmd == "calc.add":
        return sum(numbers)
    if cmd == "calc.mul":
        result = 1
        for n in numbers:
            result *= n
        return result
    if cmd == "calc.div":
        result = numbers[0]
        for n in numbers[1:]:
            if n == 0:
                raise ZeroDivisionError("division by zero")
            result /= n
        return result
    raise ValueError("unknown command " + cmd)


def answer(request) -> dict:
    reply = {
        "ver": 1,
        "ref": request["ref"],  # the envelope uid: the peer needs it back
        "dst": request["src"],  # "<twin>" or "<twin>:<session>"
        "shm": "application/json",
        "now": int(time.time()),
        "dat": "",
        "err": None,
    }
    try:
        numbers = json.loads(unb64(request["dat"]))
        result = calculate(request["cmd"], numbers)
        reply["dat"] = b64(json.dumps(result).encode())
    except Exception as exc:  # answer every request, even bad ones
        reply["err"] = {"code": 400, "message": str(exc)}
    return reply


def serve_acked(r: redis.Redis, consumer: str, visibility: int, delay: float, running) -> None:
    """Take requests into msgbus.system.taken.<consumer>; answer and
    acknowledge them in one transaction (at-least-once)."""
    taken = TAKEN_PREFIX + consumer
    queues = ["msgbus." + c for c in COMMANDS]

    def lease():
        r.zadd(LEASES, {consumer: int((time.time() + visibility) * 1000)})

    while running():
        lease()
        # BLMOVE watches one list: block on the first, look at the others
        # without blocking.
        raw = None
        for q in queues[1:]:
            raw = r.lmove(q, taken, "RIGHT", "LEFT")
            if raw is not None:
                break
        if raw is None:
            raw = r.blmove(queues[0], taken, 1, "RIGHT", "LEFT")
        if raw is None:
            continue
        lease()
        try:
            request = json.loads(raw)
        except ValueError:
            r.lrem(taken, 1, raw)  # not a request: acknowledge, drop it
            continue
        if delay:
            time.sleep(delay)  # slow work (tests kill the process here)
        pipe = r.pipeline(transaction=True)  # MULTI ... EXEC
        pipe.lpush(REPLY_QUEUE, json.dumps(answer(request)))
        pipe.lrem(taken, 1, raw)  # the acknowledgement
        pipe.execute()


def serve(r: redis.Redis, consumer=None, visibility=30, delay=0.0) -> None:
    """Pop requests from msgbus.<cmd>, answer on msgbus.system.reply."""
    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    queues = ["msgbus." + c for c in COMMANDS]
    print("serving", " ".join(COMMANDS), "as consumer " + consumer if consumer else "", flush=True)
    if consumer:
        serve_acked(r, consumer, visibility, delay, lambda: running)
        return
    while running:
        item = r.brpop(queues, timeout=1)
        if item is None:
            continue
        _, raw = item
        r.lpush(REPLY_QUEUE, json.dumps(answer(json.loads(raw))))


def call(r: redis.Redis, dst, cmd: str, numbers, exp: int) -> int:
    """Push one request on msgbus.system.local and wait for the answers."""
    ret = str(uuid.uuid4())
    request = {
        "ver": 1,
        "ref": "calc-" + ret,
        "cmd": cmd,
        "exp": exp,
        "dat": b64(json.dumps(numbers).encode()),
        "tag": None,
        "dst": dst,
        "ret": ret,
        "shm": "application/json",
        "now": int(time.time()),
    }
    r.lpush(LOCAL_QUEUE, json.dumps(request))
    failed = False
    waiting = set(int(d) for d in dst)
    deadline = time.time() + exp + 5
    while waiting:
        left = int(deadline - time.time())
        item = r.brpop([ret], timeout=max(left, 1)) if left > 0 else None
        if item is None:
            print("no answer from", sorted(waiting), flush=True)
            return 2
        response = json.loads(item[1])
        # Only the peer should push on ret, but it is a plain Redis list:
        # take an answer only with our ref, from a destination still waiting.
        src = str(response.get("src", "")).split(":")[0]
        if response.get("ref") != request["ref"] or not src.isdigit() or int(src) not in waiting:
            print("skipping a message that is not an answer to this call", flush=True)
            continue
        waiting.discard(int(src))
        if response.get("err"):
            err = response["err"]
            print(response["src"], "error", err["code"], err["message"], flush=True)
            failed = True
        else:
            print(response["src"], json.loads(unb64(response["dat"])), flush=True)
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["serve", "call"])
    parser.add_argument("--redis", default="redis://localhost:6379/0")
    parser.add_argument("--dst", type=int, action="append", default=[])
    parser.add_argument("--exp", type=int, default=30)
    parser.add_argument("--consumer", help="serve with acknowledged delivery under this consumer name")
    parser.add_argument("--visibility", type=int, default=30, help="seconds a taken request stays with this consumer")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to work on each request (for tests)")
    parser.add_argument("cmd", nargs="?", default="calc.add")
    parser.add_argument("numbers", nargs="*", type=float)
    args = parser.parse_intermixed_args()
    r = redis.Redis.from_url(args.redis)
    if args.mode == "serve":
        serve(r, args.consumer, args.visibility, args.delay)
        return 0
    if not args.dst:
        parser.error("call needs at least one --dst")
    numbers = [int(n) if n.is_integer() else n for n in args.numbers]
    return call(r, args.dst, args.cmd, numbers, args.exp)


if __name__ == "__main__":
    sys.exit(main())
