#!/usr/bin/env python3
"""Time from an order's status change to its Server-Sent Event at the owner's stream.

Against a running Mercato (rate limits off helps: MERCATO_RATE_LIMIT__ENABLED=false):

    MERCATO_URL=http://127.0.0.1:8080 MERCATO_ADMIN_EMAIL=admin@mercato.local \
    MERCATO_ADMIN_PASSWORD='…' python3 bench/sse_latency.py 50

For each of N cash-on-delivery orders it opens the order's event stream, then, as admin, moves
the order to shipped and to out_for_delivery, and records how long each change took to arrive.
Prints p50, p99 and max over the 2×N changes. Standard library only.
"""
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse
import uuid

URL = urllib.parse.urlparse(os.environ.get("MERCATO_URL", "http://127.0.0.1:8080"))


def call(method, path, token=None, body=None, headers=None):
    h = {"content-type": "application/json"}
    if token:
        h["authorization"] = "Bearer " + token
    h.update(headers or {})
    c = http.client.HTTPConnection(URL.hostname, URL.port or 80)
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status >= 400:
        sys.exit(f"{method} {path} → {r.status} {data[:300]!r}")
    return json.loads(data) if data else None


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    admin = call("POST", "/api/v1/auth/login", body={
        "email": os.environ["MERCATO_ADMIN_EMAIL"], "password": os.environ["MERCATO_ADMIN_PASSWORD"],
    })["access_token"]
    run = uuid.uuid4().hex[:8]
    category = call("POST", "/api/v1/admin/categories", admin, {"name": f"SSE {run}"})
    sku = f"SSE-{run}".upper()
    call("POST", "/api/v1/products", admin, {
        "name": f"SSE probe {run}", "brand": "Bench", "category_id": category["id"], "status": "active",
        "description": "latency probe", "variants": [{"sku": sku, "price": 100, "options": {}}],
    })
    for _ in range(100):  # the inventory learns of the SKU through product events
        try:
            call("PUT", f"/api/v1/admin/inventory/{sku}", admin, {"on_hand": n + 10})
            break
        except SystemExit:
            time.sleep(0.05)
    user = call("POST", "/api/v1/auth/register", body={
        "email": f"sse-{run}@example.com", "full_name": "SSE Probe", "password": "correct horse battery",
    })["access_token"]
    address = {"full_name": "Probe", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}
    latencies = []
    for i in range(n):
        call("POST", "/api/v1/cart/items", user, {"sku": sku, "quantity": 1})
        placed = call("POST", "/api/v1/checkout", user, {"payment_method": "cod", "shipping_address": address},
                      {"Idempotency-Key": f"sse-{run}-{i}"})
        order = placed["order"]["id"]
        stream = http.client.HTTPConnection(URL.hostname, URL.port or 80)
        stream.request("GET", f"/api/v1/orders/{order}/events", headers={"authorization": "Bearer " + user})
        response = stream.getresponse()
        assert response.status == 200, response.status
        seen = {}

        def read():
            while True:
                line = response.fp.readline()
                if not line:
                    return
                if line.startswith(b"data:"):
                    status = json.loads(line[5:]).get("to_status")
                    if status:
                        seen[status] = time.monotonic()
                    if status == "out_for_delivery":
                        return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + 10
        while "processing" not in seen:  # the history has arrived: the stream is live
            if time.monotonic() > deadline:
                sys.exit(f"the stream of order {order} sent no history")
            time.sleep(0.005)
        sent = {}
        for status in ["shipped", "out_for_delivery"]:
            sent[status] = time.monotonic()
            call("PATCH", f"/api/v1/admin/orders/{order}/status", admin, {"status": status})
        reader.join(10)
        stream.close()
        latencies += [(seen[s] - sent[s]) * 1000 for s in sent if s in seen]
    latencies.sort()
    print(f"changes={len(latencies)} p50={latencies[len(latencies) // 2]:.1f} ms "
          f"p99={latencies[max(0, int(len(latencies) * 0.99) - 1)]:.1f} ms max={latencies[-1]:.1f} ms")


if __name__ == "__main__":
    main()
