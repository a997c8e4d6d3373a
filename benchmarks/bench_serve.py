"""Serving benchmark: requests/s and p50/p95 latency of POST /v1/segment on loopback.

    python benchmarks/bench_serve.py [--clients 1 4] [--requests 40] [--seconds 30]

Starts `busseg serve`'s app (shipped model, or --checkpoint) with uvicorn in this process, then
runs N concurrent client threads, each posting a real sample scan until the request count or the
time budget is used up. Prints a table; `--json PATH` writes it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import httpx

from busseg.predict import sample_files
from busseg.serve.app import ServeConfig, create_app
from busseg.serve.background import running


def load(url: str, data: bytes, clients: int, total: int, seconds: float) -> dict:
    lat: list[float] = []
    codes: list[int] = []
    started = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        nonlocal started
        with httpx.Client(timeout=120) as client:
            while time.perf_counter() < deadline:
                with lock:
                    if started >= total:
                        return
                    started += 1
                t = time.perf_counter()
                r = client.post(url + "/v1/segment", files={"file": ("s.png", data)})
                with lock:
                    lat.append(time.perf_counter() - t)
                    codes.append(r.status_code)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    lat.sort()
    return {"clients": clients, "requests": len(lat), "ok": sum(c == 200 for c in codes),
            "req_s": len(lat) / wall, "p50_ms": 1e3 * statistics.median(lat),
            "p95_ms": 1e3 * lat[min(len(lat) - 1, int(0.95 * len(lat)))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--requests", type=int, default=40, help="per client count setting")
    ap.add_argument("--seconds", type=float, default=30.0, help="time budget per setting")
    ap.add_argument("--concurrency", type=int, default=2, help="server's inference slots")
    ap.add_argument("--checkpoint")
    ap.add_argument("--json")
    args = ap.parse_args()
    data = Path(sample_files()[0]).read_bytes()
    rows = []
    with running(create_app(ServeConfig(args.checkpoint, concurrency=args.concurrency))) as url:
        httpx.post(url + "/v1/segment", files={"file": ("s.png", data)}, timeout=120)  # warm-up
        for n in args.clients:
            rows.append(load(url, data, n, args.requests, args.seconds))
    print(f"{'clients':>8}{'requests':>10}{'ok':>6}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}")
    for r in rows:
        print(f"{r['clients']:>8}{r['requests']:>10}{r['ok']:>6}{r['req_s']:>9.2f}"
              f"{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
