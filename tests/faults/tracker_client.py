"""An HTTP client that sends event batches the way tracker.js does, retrying until stored.

A batch is retried with the same event ids on a 5xx, a 429 or a connection error (with
backoff, honouring Retry-After), never on another 4xx. Standard library only.
"""

import http.client
import json
import time
import uuid
from http.cookies import SimpleCookie


class TrackerClient:
    def __init__(self, host, port, items, page="/"):
        self.host, self.port, self.items = host, port, items
        self.origin = f"http://{host}:{port}"
        self.referer = self.origin + page
        self.cookies = {}
        self.conn = None
        self.attempts = []  # (batch number, status or exception name, seconds, Retry-After, started)
        self.sent_ids = set()
        self.stored = 0
        self.duplicates = 0
        for _ in range(50):
            status, _ = self._request("GET", page)
            if status == 200 and "csrftoken" in self.cookies:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"GET {page} never gave a page with a CSRF cookie")

    def _request(self, method, path, body=None, headers=None):
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
            data = response.read()
        except (http.client.HTTPException, OSError) as exc:
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return type(exc).__name__, {}
        for header in response.headers.get_all("Set-Cookie") or []:
            jar = SimpleCookie()
            jar.load(header)
            for name, morsel in jar.items():
                self.cookies[name] = morsel.value
        if response.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = None
        return response.status, {"body": data, "retry_after": response.getheader("Retry-After")}

    def send_batch(self, number, size=10, max_tries=30):
        events = [
            {
                "kind": "view",
                "item": self.items[(number * size + i) % len(self.items)],
                "event_id": str(uuid.uuid4()),
            }
            for i in range(size)
        ]
        self.sent_ids |= {e["event_id"] for e in events}
        body = json.dumps({"events": events}).encode()
        headers = {
            "Content-Type": "application/json",
            "X-CSRFToken": self.cookies["csrftoken"],
            "Origin": self.origin,
            "Referer": self.referer,
        }
        delay = 0.05
        for _ in range(max_tries):
            started = time.monotonic()
            status, extra = self._request("POST", "/api/recommender/events/", body, headers)
            self.attempts.append(
                (number, status, time.monotonic() - started, extra.get("retry_after"), started)
            )
            if status == 201:
                answer = json.loads(extra["body"])
                self.stored += answer["stored"]
                self.duplicates += answer["duplicates"]
                return True
            if isinstance(status, int) and 400 <= status < 500 and status != 429:
                raise AssertionError(
                    f"batch {number} refused with {status}: {extra['body'][:300]!r}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        raise AssertionError(f"batch {number} was never stored after {max_tries} tries")
