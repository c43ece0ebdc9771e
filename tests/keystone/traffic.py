"""Tokens issued round-robin and validated on every Keystone node, as a cloud uses them.

    traffic.py wait PORT...            until every server answers GET /v3 (60 s at most)
    traffic.py run SECONDS EXPIRATION WINDOW PORT...
        for SECONDS: an unscoped admin token every 1.5 s from the next node; every live
        token validated on a node that changes every round, and judged by its age:
          before expiry                 plain GET /v3/auth/tokens        -> 200
          expired, inside the window    plain -> 404, ?allow_expired=1   -> 200
          past the window               ?allow_expired=1                 -> 404 (then retired)
        within 1.5 s of a boundary nothing is judged (Keystone rounds expires_at to seconds).
        Prints one JSON object: counts per class and every unexpected answer.

Unscoped tokens of one user: each may validate the others (Keystone's token_subject rule)
without the role lookups of a scoped token, so more validations fit in a run. The admin
password is in OS_PASSWORD. Only status codes and token ages are printed.
"""
import concurrent.futures
import datetime
import threading
import json
import os
import sys
import time
import urllib.error
import urllib.request

SLACK = 1.5
ISSUE_EVERY = 1.5


def request(port, method, path, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def wait(ports):
    deadline = time.time() + 60
    for port in ports:
        while True:
            try:
                if request(port, "GET", "/v3")[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                sys.exit(f"keystone on port {port} did not answer within 60 s")
            time.sleep(0.3)


def issue(port):
    auth = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {
                        "name": "admin",
                        "domain": {"id": "default"},
                        "password": os.environ["OS_PASSWORD"],
                    }
                },
            },
        }
    }
    status, headers, body = request(port, "POST", "/v3/auth/tokens", auth)
    if status != 201:
        return None, status
    expires = json.loads(body)["token"]["expires_at"]
    at = datetime.datetime.strptime(expires, "%Y-%m-%dT%H:%M:%S.%fZ")
    at = at.replace(tzinfo=datetime.timezone.utc).timestamp()
    return (headers["X-Subject-Token"], at), status


def run(seconds, window, ports):
    counts = {
        "issued": 0,
        "valid_200": 0,
        "expired_404": 0,
        "window_200": 0,
        "past_404": 0,
        "boundary_skipped": 0,
        "rounds": 0,
    }
    unexpected = []
    tokens = []  # [token, expires_at, issued_on, index, retired]
    auth = None
    end = time.time() + seconds
    next_issue = 0.0
    n = 0

    lock = threading.Lock()

    def validate(tok, node, query, want, what):
        status = request(
            ports[node],
            "GET",
            "/v3/auth/tokens" + query,
            headers={"X-Auth-Token": auth, "X-Subject-Token": tok[0]},
        )[0]
        with lock:
            if status == want:
                counts[what] += 1
            else:
                unexpected.append(
                    {
                        "token": tok[3],
                        "issued_on": tok[2],
                        "validated_on": node,
                        "age_past_expiry": round(time.time() - tok[1], 2),
                        "query": query,
                        "want": want,
                        "got": status,
                    }
                )

    def judge(tok, node):
        """Judged by the token's age when the request leaves, not when the round began."""
        age = time.time() - tok[1]  # seconds past expiry
        if age < -SLACK:
            validate(tok, node, "", 200, "valid_200")
        elif SLACK < age < window - SLACK:
            validate(tok, node, "", 404, "expired_404")
            validate(tok, node, "?allow_expired=1", 200, "window_200")
        elif age > window + SLACK:
            validate(tok, node, "?allow_expired=1", 404, "past_404")
            tok[4] = True
        else:
            with lock:
                counts["boundary_skipped"] += 1

    # One request in flight per node: the nodes answer side by side.
    pool = concurrent.futures.ThreadPoolExecutor(len(ports))
    while time.time() < end:
        now = time.time()
        if now >= next_issue:
            node = n % len(ports)
            got, status = issue(ports[node])
            if got is None:
                unexpected.append({"issue_on": node, "got": status})
            else:
                tokens.append([got[0], got[1], node, n, False])
                auth = got[0]
                counts["issued"] += 1
            n += 1
            next_issue = now + ISSUE_EVERY
        if auth is None:
            time.sleep(0.1)
            continue
        r = counts["rounds"]
        counts["rounds"] += 1
        by_node = [[] for _ in ports]
        for i, tok in enumerate(tokens):
            by_node[(r + i) % len(ports)].append(tok)
        jobs = [(node, toks) for node, toks in enumerate(by_node)]
        list(pool.map(lambda job: [judge(t, job[0]) for t in job[1]], jobs))
        tokens = [t for t in tokens if not t[4]]
        time.sleep(0.1)
    pool.shutdown()
    print(json.dumps({"counts": counts, "unexpected": unexpected}))


def main():
    cmd = sys.argv[1]
    if cmd == "wait":
        wait([int(p) for p in sys.argv[2:]])
    elif cmd == "run":
        seconds, _expiration, window = (float(a) for a in sys.argv[2:5])
        run(seconds, window, [int(p) for p in sys.argv[5:]])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
