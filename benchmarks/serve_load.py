"""Load on ``pixelwise serve``: concurrent clients against a CamVid model, ONNX Runtime int8 and PyTorch.

For each backend a real server process is started (``pixelwise serve MODEL``), warmed up with a few requests,
then ``--clients`` clients each send the run's val images (whole frames, multipart, ``POST /predict``: the PNG
mask) one after another for ``--duration`` seconds. Reported per backend: requests, failed requests (any
answer but 200, or no answer), requests/s, latency p50/p95/p99 (ms, seen by the client: queueing included),
and the server's resident memory (all its processes) at the start, after warm-up, after 1000 requests (sent on,
untimed, when the timed load answered fewer) and at the end, so growth under load shows.

    pixelwise export RUN --int8          # model.int8.onnx (made by this script when missing)
    python benchmarks/serve_load.py RUN [--clients 16] [--duration 60] [--backends int8,pytorch]
    python benchmarks/serve_load.py RUN --duration 5 --memory-at 50     # a smoke run: proves the script only

The clients run on the same machine and take some of its CPU (httpx, asyncio: little next to a model); run it
on a quiet machine. The server gets ``--queue`` larger than the number of clients, so no request is refused
for a full queue: a failure here is a real one. Prints a table and one JSON line (also ``--out FILE``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from pixelwise.config import load_run_config
from pixelwise.inference.files import collect_inputs

MEMORY_AT = 1000  # requests after which the server's memory is read again


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its descendants (uvicorn workers), MiB, from /proc."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")) / 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return round(total, 1)


def val_images(run: Path, folder: Path | None, count: int) -> list[tuple[str, bytes]]:
    """Up to ``count`` image files of ``folder`` (default: the run's val split) as (name, bytes)."""
    if folder is None:
        cfg = load_run_config(run)
        root = Path(cfg.data.root)
        if not root.is_absolute():
            root = (run / root) if (run / root).exists() else root
        split = cfg.data.val_split or "val"
        folder = next((f for f in (root / split / "images", root / split, root) if f.is_dir()), root)
    files = collect_inputs([folder])[:count]
    return [(f.name, f.read_bytes()) for f in files]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, clients: int, workers: int, log: object) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "pixelwise", "serve", str(model), "--port", str(port), "--workers", str(workers),
               "--queue", str(4 * clients), "--timeout", "300"]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server for {model} stopped (exit {proc.returncode}); see its log above")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"the server for {model} did not answer within 300 s")


async def load(url: str, images: list[tuple[str, bytes]], clients: int, query: str, duration: float | None = None,
               requests: int | None = None, on_count: dict[int, object] | None = None) -> dict[str, object]:
    """``clients`` concurrent clients for ``duration`` seconds, or until ``requests`` are answered; ``on_count[n]()``
    runs once n requests are answered."""
    latencies: list[float] = []
    failures: dict[str, int] = {}
    done = issued = 0
    stop = time.monotonic() + duration if duration is not None else float("inf")
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(index: int, session: httpx.AsyncClient) -> None:
        nonlocal done, issued
        i = index
        while time.monotonic() < stop and (requests is None or issued < requests):
            issued += 1
            name, data = images[i % len(images)]
            i += clients
            tick = time.perf_counter()
            try:
                r = await session.post(f"{url}/predict?{query}", files={"file": (name, data)})
                key = None if r.status_code == 200 else str(r.status_code)
            except httpx.HTTPError as e:
                key = type(e).__name__
            if key is None:
                latencies.append(time.perf_counter() - tick)
            else:
                failures[key] = failures.get(key, 0) + 1
            done += 1
            if on_count and done in on_count:
                on_count[done]()

    started = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=600) as session:
        await asyncio.gather(*(client(i, session) for i in range(clients)))
    wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    return {"requests": done, "failed": sum(failures.values()), "failures": failures, "seconds": round(wall, 1),
            "requests_per_second": round(len(latencies) / wall, 2),
            **{f"p{q}_ms": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)}}


def bench_backend(name: str, model: Path, images: list[tuple[str, bytes]], args: argparse.Namespace) -> dict:
    mark = f"after_{args.memory_at}"
    with tempfile.TemporaryFile(mode="w+") as log:
        proc, url = start_server(model, args.clients, args.workers, log)
        try:
            memory = {"start": rss_mib(proc.pid)}
            for i in range(args.warmup):
                httpx.post(f"{url}/predict?{args.query}", files={"file": images[i % len(images)]}, timeout=600)
            memory["warm"] = rss_mib(proc.pid)
            marks = {args.memory_at: lambda: memory.__setitem__(mark, rss_mib(proc.pid))}
            result = asyncio.run(load(url, images, args.clients, args.query, duration=args.duration, on_count=marks))
            if result["requests"] < args.memory_at:  # the timed load was too short: go on, untimed, to the mark
                more = asyncio.run(load(url, images, args.clients, args.query,
                                        requests=args.memory_at - result["requests"]))
                memory[mark] = rss_mib(proc.pid)
                result["untimed"] = {k: more[k] for k in ("requests", "failed", "failures", "seconds")}
            memory["end"] = rss_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
        if proc.returncode not in (0, -15):
            log.seek(0)
            print(log.read()[-3000:], file=sys.stderr)
    return {"backend": name, "model": model.name, "workers": args.workers, "clients": args.clients, **result,
            "rss_mib": memory}


def models(run: Path, backends: list[str]) -> dict[str, Path]:
    found = {}
    for backend in backends:
        if backend == "pytorch":
            found[backend] = run
        elif backend in ("int8", "fp32"):
            path = run / ("model.int8.onnx" if backend == "int8" else "model.onnx")
            if not path.is_file():
                print(f"{path} missing: pixelwise export {run} --int8", file=sys.stderr)
                subprocess.run([sys.executable, "-m", "pixelwise", "export", str(run), "--int8"], check=True,
                               stdout=subprocess.DEVNULL)
            found[backend] = path
        else:
            raise SystemExit(f"--backends: unknown '{backend}' (int8, fp32, pytorch)")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="run directory (its val images are sent)")
    parser.add_argument("--backends", default="int8,pytorch", help="comma-separated: int8, fp32, pytorch")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", "--seconds", type=float, default=60.0, help="seconds of timed load per backend")
    parser.add_argument("--memory-at", type=int, default=MEMORY_AT, help="requests after which the server's memory "
                                                                         "is read (sent untimed when the load was "
                                                                         "shorter)")
    parser.add_argument("--workers", type=int, default=1, help="server processes (pixelwise serve --workers)")
    parser.add_argument("--warmup", type=int, default=4, help="requests before the clients start (not counted)")
    parser.add_argument("--images", type=Path, default=None, help="folder of images (default: the run's val split)")
    parser.add_argument("--count", type=int, default=32, help="images sent in turn")
    parser.add_argument("--query", default="output=mask", help="query string of every request")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    images = val_images(args.run, args.images, args.count)
    rows = [bench_backend(name, path, images, args)
            for name, path in models(args.run, args.backends.split(",")).items()]
    print(f"{len(images)} images, {args.clients} clients, {args.duration:g} s per backend, {os.cpu_count()} CPUs")
    print(f"{'backend':<9} {'requests':>8} {'failed':>6} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} "
          f"{f'RSS MiB: start / warm / after {args.memory_at} / end':>44}")
    for r in rows:
        m = r["rss_mib"]
        rss = f"{m['start']} / {m['warm']} / {m.get(f'after_{args.memory_at}', '-')} / {m['end']}"
        failed = r["failed"] + r.get("untimed", {}).get("failed", 0)
        print(f"{r['backend']:<9} {r['requests']:>8} {failed:>6} {r['requests_per_second']:>7} "
              f"{r['p50_ms']:>8} {r['p95_ms']:>8} {rss:>44}")
    line = json.dumps(rows)
    print(line)
    if args.out:
        args.out.write_text(line + "\n")


if __name__ == "__main__":
    main()
