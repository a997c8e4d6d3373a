"""Serving benchmark: POST /v1/segment on loopback under load, optionally with huge uploads.

    python benchmarks/bench_serve.py [--clients 1 16 64] [--requests 10] [--seconds 30]
                                     [--large-clients 2] [--large-format png]

Starts `busseg serve`'s app (shipped model, --checkpoint, or --onnx FILE) with uvicorn in this
process, then runs N concurrent client threads, each posting a real sample scan (653x620 PNG)
until the request count or the time budget is used up (after a 503 a client waits the
Retry-After seconds). `--large-clients K` adds K more threads that keep posting a 6324x6324 RGB
picture (40 megapixels, just under the default pixel limit) meanwhile. Prints one table row
per setting: normal requests' throughput and p50/p95/p99 latency, answers by kind (200, 503
with Retry-After, other), the large uploads' count and p95, and the process's memory (RSS
before and after, peak). `--json PATH` writes the rows.
"""

from __future__ import annotations

import argparse
import io
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from busseg.predict import sample_files
from busseg.safety import OutputExistsError, claim
from busseg.serve.app import ServeConfig, create_app, use_slot_threads
from busseg.serve.background import running


def memory_mb() -> dict[str, float]:
    """This process's resident and peak memory (the server runs in it)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            key, value = line.split(":")
            out[key] = int(value.split()[0]) / 1024
    return out


def large_picture(fmt: str) -> bytes:
    """A 6324x6324 RGB picture with a few shapes, encoded as `fmt` (png or jpeg)."""
    big = np.zeros((6324, 6324, 3), np.uint8)
    big[1000:2000, 1000:3000] = 200
    big[3000:4200, 2500:4000, 0] = 120
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format=fmt.upper(), **({"optimize": True} if fmt == "png"
                                                          else {"quality": 90}))
    return buf.getvalue()


class Recorder:
    """Latencies and status codes of one client kind, shared by its threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lat: list[float] = []
        self.codes: list[int] = []
        self.started = 0

    def take(self, total: int | None) -> bool:
        with self.lock:
            if total is not None and self.started >= total:
                return False
            self.started += 1
            return True

    def add(self, seconds: float, code: int) -> None:
        with self.lock:
            self.lat.append(seconds)
            self.codes.append(code)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def client(url: str, name: str, data: bytes, rec: Recorder, total: int | None,
           stop: threading.Event) -> None:
    with httpx.Client(timeout=300) as http:
        while not stop.is_set() and rec.take(total):
            t = time.perf_counter()
            retry = 0.0
            try:
                r = http.post(url + "/v1/segment", files={"file": (name, data)})
                code = r.status_code
                retry = float(r.headers.get("retry-after", 0)) if code == 503 else 0.0
            except httpx.HTTPError:
                code = 0  # connection refused / reset: counted as an error
            rec.add(time.perf_counter() - t, code)
            if retry:
                stop.wait(retry)  # a polite client waits as the 503 asks


def load(url: str, data: bytes, clients: int, total: int, seconds: float,
         large: bytes | None, large_clients: int, large_name: str) -> dict:
    normal, big = Recorder(), Recorder()
    stop = threading.Event()
    mem0 = memory_mb()
    threads = [threading.Thread(target=client, args=(url, "s.png", data, normal, total, stop))
               for _ in range(clients)]
    threads += [threading.Thread(target=client, args=(url, large_name, large, big, None, stop))
                for _ in range(large_clients if large else 0)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    deadline = t0 + seconds
    while time.perf_counter() < deadline and any(th.is_alive() for th in threads[:clients]):
        time.sleep(0.05)
    stop.set()
    wall = time.perf_counter() - t0
    for th in threads:
        th.join()
    mem1 = memory_mb()
    ok = [t for t, c in zip(normal.lat, normal.codes) if c == 200]
    return {
        "clients": clients, "large_clients": large_clients if large else 0,
        "requests": len(normal.lat), "ok": len(ok),
        "busy_503": sum(c == 503 for c in normal.codes),
        "errors": sum(c not in (200, 503) for c in normal.codes + big.codes),
        "req_s": len(ok) / wall,
        "p50_ms": 1e3 * percentile(ok, 50), "p95_ms": 1e3 * percentile(ok, 95),
        "p99_ms": 1e3 * percentile(ok, 99),
        "large_ok": sum(c == 200 for c in big.codes), "large_503": sum(c == 503 for c in big.codes),
        "large_p95_ms": 1e3 * percentile([t for t, c in zip(big.lat, big.codes) if c == 200], 95),
        "rss_before_mb": mem0["VmRSS"], "rss_after_mb": mem1["VmRSS"], "peak_mb": mem1["VmHWM"],
    }


COLUMNS = [("clients", "clients", "{:d}"), ("large", "large_clients", "{:d}"),
           ("requests", "requests", "{:d}"), ("ok", "ok", "{:d}"), ("503", "busy_503", "{:d}"),
           ("errors", "errors", "{:d}"), ("req/s", "req_s", "{:.1f}"),
           ("p50 ms", "p50_ms", "{:.0f}"), ("p95 ms", "p95_ms", "{:.0f}"),
           ("p99 ms", "p99_ms", "{:.0f}"), ("large ok", "large_ok", "{:d}"),
           ("large 503", "large_503", "{:d}"), ("large p95", "large_p95_ms", "{:.0f}"),
           ("RSS MB", "rss_before_mb", "{:.0f}"), ("-> MB", "rss_after_mb", "{:.0f}"),
           ("peak MB", "peak_mb", "{:.0f}")]


def print_table(rows: list[dict]) -> None:
    widths = [max(len(h), 7) + 2 for h, _, _ in COLUMNS]
    print("".join(f"{h:>{w}}" for (h, _, _), w in zip(COLUMNS, widths)))
    for r in rows:
        print("".join(f"{f.format(r[k]):>{w}}" for (_, k, f), w in zip(COLUMNS, widths)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--requests", type=int, default=10, help="normal requests per client")
    ap.add_argument("--seconds", type=float, default=30.0, help="time budget per setting")
    ap.add_argument("--large-clients", type=int, default=0,
                    help="threads posting a 40-megapixel picture meanwhile")
    ap.add_argument("--large-format", choices=("png", "jpeg"), default="png")
    ap.add_argument("--concurrency", type=int, default=2, help="server's inference slots")
    ap.add_argument("--queue", type=int, default=16, help="server's waiting requests")
    ap.add_argument("--threads", type=int, default=0, help="threads per inference (default: "
                    "the usable cores divided among the slots, as busseg serve)")
    ap.add_argument("--checkpoint")
    ap.add_argument("--onnx", help="serve this exported file with ONNX Runtime "
                    "(busseg export [--int8])")
    ap.add_argument("--json", help="write the results here (refused if it exists, unless "
                    "--overwrite)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    args = ap.parse_args()
    try:  # refuse before minutes of measuring, not after
        claim([args.json] if args.json else [], args.overwrite)
    except OutputExistsError as exc:
        ap.error(str(exc))
    data = Path(sample_files()[0]).read_bytes()
    large = large_picture(args.large_format) if args.large_clients else None
    rows = []
    cfg = ServeConfig(args.checkpoint, concurrency=args.concurrency, queue=args.queue,
                      onnx=args.onnx, threads=args.threads)
    use_slot_threads(cfg)
    with running(create_app(cfg)) as url:
        httpx.post(url + "/v1/segment", files={"file": ("s.png", data)}, timeout=120)  # warm-up
        for n in args.clients:
            rows.append(load(url, data, n, n * args.requests, args.seconds, large,
                             args.large_clients, f"big.{args.large_format}"))
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
