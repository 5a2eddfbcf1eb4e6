"""A bounded HTTP load client for the benchmarks: standard library only.

Ingest jobs (``run_job``): each client process plays anonymous shoppers one after another,
like browsers: it GETs a store page for the CSRF cookie, then POSTs events with the
cookie, the X-CSRFToken header and Origin/Referer, keeping the session cookie the server
sets. Serving jobs (``run_get_job``, ``job["kind"] == "get"``): a planned list of GETs,
each with the cookie of the shopper who makes it. Every job is bounded by a request count
and a deadline, and only ever talks to the loopback address it is given.
"""

import http.client
import json
import random
import resource
import time
import uuid
from http.cookies import SimpleCookie

KINDS = ["view"] * 6 + ["click"] * 2 + ["add_to_cart", "purchase"]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def event_payload(rng, items, now_ms):
    kind = rng.choice(KINDS)
    event = {
        "kind": kind,
        "item": rng.choice(items),
        "event_id": str(uuid.uuid4()),
        "occurred_at": now_ms - rng.randint(0, 60_000),
    }
    if kind in ("add_to_cart", "purchase"):
        event["value"] = rng.randint(1, 3)
    return event


class Shopper:
    """One browser: a cookie jar and a keep-alive connection (reopened when the server closes it)."""

    def __init__(self, host, port, page_path):
        self.host, self.port = host, port
        self.origin = f"http://{host}:{port}"
        self.referer = self.origin + page_path
        self.cookies = {}
        self.conn = http.client.HTTPConnection(host, port, timeout=30)
        status, _ = self.request("GET", page_path)
        if status != 200 or "csrftoken" not in self.cookies:
            raise RuntimeError(f"GET {page_path} gave {status} without a csrftoken cookie")

    def request(self, method, path, body=None, headers=None):
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
            data = response.read()
        except (http.client.HTTPException, OSError):
            self.conn.close()
            raise
        for header in response.headers.get_all("Set-Cookie") or []:
            jar = SimpleCookie()
            jar.load(header)
            for name, morsel in jar.items():
                self.cookies[name] = morsel.value
        return response.status, data

    def post_json(self, path, payload):
        headers = {
            "Content-Type": "application/json",
            "X-CSRFToken": self.cookies["csrftoken"],
            "Origin": self.origin,
            "Referer": self.referer,
        }
        return self.request("POST", path, json.dumps(payload).encode(), headers)

    def close(self):
        self.conn.close()


class _JobClock:
    """Waits for the job's common start time, then tracks its deadline and this process's CPU."""

    def __init__(self, job):
        while time.monotonic() < job["start_at"]:
            time.sleep(0.001)
        self.usage0 = resource.getrusage(resource.RUSAGE_SELF)
        self.t_start = time.monotonic()
        self.deadline = self.t_start + job["deadline_s"]

    def expired(self):
        return time.monotonic() > self.deadline

    def times(self, t_end):
        """t_start, t_end and the CPU seconds spent since the start, read now."""
        usage0, usage1 = self.usage0, resource.getrusage(resource.RUSAGE_SELF)
        return {
            "t_start": self.t_start,
            "t_end": t_end,
            "cpu_s": (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime),
        }


def run_job(job, progress=None):
    """Run one bounded job; returns latencies (seconds), status counts and timings."""
    if job["host"] not in LOOPBACK:
        raise ValueError("the load client only talks to the loopback interface")
    rng = random.Random(job["seed"])
    items, batch = job["items"], job["batch_size"]
    latencies, statuses, errors = [], {}, []
    sent_events = 0
    shopper, left = None, 0
    clock = _JobClock(job)
    tick = 0
    for _ in range(job["requests"]):
        if clock.expired():
            errors.append("deadline reached")
            break
        try:
            if left == 0:
                if shopper is not None:
                    shopper.close()
                shopper, left = (
                    Shopper(job["host"], job["port"], job["page_path"]),
                    job["requests_per_shopper"],
                )
            now_ms = int(time.time() * 1000)
            events = [event_payload(rng, items, now_ms) for _ in range(batch)]
            payload = events[0] if batch == 1 and not job["wrap"] else {"events": events}
            t0 = time.perf_counter()
            status, data = shopper.post_json(job["path"], payload)
            latencies.append(time.perf_counter() - t0)
        except (http.client.HTTPException, OSError, RuntimeError) as exc:
            statuses["error"] = statuses.get("error", 0) + 1
            if len(errors) < 3:
                errors.append(repr(exc))
            shopper, left = None, 0
            continue
        left -= 1
        statuses[status] = statuses.get(status, 0) + 1
        if status == 201:
            sent_events += batch
        elif len(errors) < 3:
            errors.append(f"{status}: {data[:300]!r}")
        tick += 1
        if progress is not None and tick == 20:
            progress.put(tick)
            tick = 0
    timing = clock.times(time.monotonic())
    if progress is not None and tick:
        progress.put(tick)
    if shopper is not None:
        shopper.close()
    return {
        "latencies": latencies,
        "statuses": statuses,
        "errors": errors,
        "events": sent_events,
        **timing,
    }


def run_get_job(job, progress=None):
    """GET each ``(path, cookie header)`` of ``job["plan"]`` in order; latencies and checks.

    ``job["headers"]``: response headers whose float values are collected per request
    (server-side timings). ``job["json_field"]``: a top-level field of JSON answers to
    count the values of (e.g. a recommendation list's ``source``), read after timing.
    """
    if job["host"] not in LOOPBACK:
        raise ValueError("the load client only talks to the loopback interface")
    conn = http.client.HTTPConnection(job["host"], job["port"], timeout=30)
    wanted_headers, json_field = job.get("headers", ()), job.get("json_field")
    latencies, statuses, errors, values, fields = [], {}, [], {h: [] for h in wanted_headers}, {}
    clock = _JobClock(job)
    tick = 0
    for path, cookie in job["plan"][: job.get("requests", len(job["plan"]))]:
        if clock.expired():
            errors.append("deadline reached")
            break
        headers = {"Cookie": cookie} if cookie else {}
        try:
            t0 = time.perf_counter()
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            data = response.read()
            latencies.append(time.perf_counter() - t0)
        except (http.client.HTTPException, OSError) as exc:
            conn.close()
            statuses["error"] = statuses.get("error", 0) + 1
            if len(errors) < 3:
                errors.append(repr(exc))
            continue
        statuses[response.status] = statuses.get(response.status, 0) + 1
        for header in wanted_headers:
            value = response.getheader(header)
            values[header].append(float(value) if value is not None else None)
        if response.status != 200:
            if len(errors) < 3:
                errors.append(f"{response.status} {path}: {data[:300]!r}")
        elif json_field:
            try:
                value = str(json.loads(data).get(json_field))
            except (ValueError, AttributeError):
                value = "not JSON"
            fields[value] = fields.get(value, 0) + 1
        tick += 1
        if progress is not None and tick == 20:
            progress.put(tick)
            tick = 0
    timing = clock.times(time.monotonic())
    conn.close()
    if progress is not None and tick:
        progress.put(tick)
    return {
        "latencies": latencies,
        "statuses": statuses,
        "errors": errors,
        "headers": values,
        "fields": fields,
        **timing,
    }


def client_main(jobs, results, progress):
    """Process entry point: run jobs from ``jobs`` until a ``None`` arrives."""
    while True:
        job = jobs.get()
        if job is None:
            return
        try:
            run = run_get_job if job.get("kind") == "get" else run_job
            results.put(run(job, progress))
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the run
            results.put({"fatal": repr(exc)})
