"""Load test of the web demo through its HTTP API: N concurrent sessions for T minutes.

    python scripts/load.py --sessions 8 --minutes 10                 # starts `app.py --model tiny` itself
    python scripts/load.py --url http://host:7860/ --server-pid PID  # against a running demo

Each session is a gradio_client `Client` of its own (hence a demo session of its own) that loops:
upload the video, poll `/status` until ingestion is done, ask `--asks` questions, and again until the
time is up. The report (printed, and written as JSON with `--out`) gives the answers and errors, the
latency percentiles (p50/p90/p99) of a question and of an upload until ingestion is done, and the
server's resident memory (RSS of the server process and its children, e.g. the worker process of
`--worker-process`) sampled over time, with its growth after the warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "assets" / "sample.mp4"  # 8 s: one upload is ingested in ~8 s at real-time pacing
QUESTIONS = ("What is moving?", "What colour is the box?", "What happened first?", "Where is the ball?")


@dataclass
class Tally:
    """What all sessions saw; appended to from their threads under `lock`."""
    answers: int = 0  # questions that got an assistant message in the chat
    uploads: int = 0  # uploads whose ingestion finished
    errors: list[str] = field(default_factory=list)  # one line per failed call: "session 3: ask: <reason>"
    ask_s: list[float] = field(default_factory=list)  # seconds per /ask call
    ingest_s: list[float] = field(default_factory=list)  # seconds from /upload until /status says done
    lock: threading.Lock = field(default_factory=threading.Lock)

    def error(self, session: int, what: str, reason: object) -> None:
        with self.lock:
            self.errors.append(f"session {session}: {what}: {str(reason).splitlines()[0][:200] if str(reason) else ''}")


def rss_mb(pid: int) -> float | None:
    """Resident memory of `pid` and its descendants in MB (Linux /proc), or None if it is gone."""
    def one(p: int) -> tuple[float, list[int]]:
        kb = 0.0
        with open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    kb = float(line.split()[1])
        kids: list[int] = []
        for task in os.listdir(f"/proc/{p}/task"):
            try:
                kids += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
            except OSError:
                pass
        return kb, kids

    total, todo = 0.0, [pid]
    try:
        while todo:
            kb, kids = one(todo.pop())
            total += kb
            todo += kids
    except (OSError, ValueError):
        if not total:
            return None
    return total / 1024


def percentiles(xs: list[float]) -> dict[str, float | None]:
    """p50/p90/p99 by nearest rank (None without samples)."""
    s = sorted(xs)
    def rank(q: float) -> float | None:
        return round(s[min(len(s) - 1, max(0, int(q * len(s) + 0.5) - 1))], 3) if s else None
    return {"p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99), "n": len(s)}


def wait_done(client, timeout: float) -> dict:
    end, st = time.monotonic() + timeout, {}
    while time.monotonic() < end:
        st = client.predict(api_name="/status")
        if st.get("state") == "done":
            return st
        time.sleep(0.5)
    raise TimeoutError(f"ingestion not done after {timeout:.0f} s (last status {st.get('state')})")


def session_loop(index: int, url: str, video: str, stop_at: float, asks: int, tally: Tally) -> None:
    """One user: upload, wait, ask `asks` questions, repeat until `stop_at` (time.monotonic)."""
    from gradio_client import Client, handle_file

    try:
        client = Client(url, verbose=False)
    except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the run
        tally.error(index, "connect", exc)
        return
    n = 0
    try:
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            try:
                notice, *_ = client.predict(handle_file(video), api_name="/upload")
                if "Ingesting" not in notice:
                    raise RuntimeError(f"upload refused: {notice}")
                wait_done(client, timeout=300)
            except Exception as exc:  # noqa: BLE001
                tally.error(index, "upload", exc)
                time.sleep(1.0)
                continue
            with tally.lock:
                tally.uploads += 1
                tally.ingest_s.append(time.monotonic() - t0)
            for _ in range(asks):
                if time.monotonic() >= stop_at:
                    break
                q, n = QUESTIONS[n % len(QUESTIONS)], n + 1
                t0 = time.monotonic()
                try:
                    chat, _box, notice, *_ = client.predict(q, api_name="/ask")
                    if not chat or chat[-1]["role"] != "assistant":
                        raise RuntimeError(f"no answer: {notice}")
                except Exception as exc:  # noqa: BLE001
                    tally.error(index, "ask", exc)
                    continue
                with tally.lock:
                    tally.answers += 1
                    tally.ask_s.append(time.monotonic() - t0)
    finally:
        client.close()


def run_load(url: str, sessions: int, seconds: float, video: str = str(SAMPLE), asks: int = 5,
             server_pid: int | None = None, rss_every: float = 10.0) -> dict:
    """Drive `sessions` concurrent sessions against the demo at `url` for `seconds`; returns the report."""
    tally, samples = Tally(), []
    start = time.monotonic()
    stop_at = start + seconds
    done = threading.Event()

    def sample_rss() -> None:
        while True:
            if server_pid is not None:
                mb = rss_mb(server_pid)
                if mb is not None:
                    samples.append((round(time.monotonic() - start, 1), round(mb, 1)))
            if done.wait(rss_every):
                return

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=session_loop, args=(i, url, video, stop_at, asks, tally), daemon=True)
               for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    sampler.join()
    report = {
        "sessions": sessions, "seconds": round(time.monotonic() - start, 1), "video": Path(video).name,
        "answers": tally.answers, "uploads": tally.uploads, "errors": len(tally.errors),
        "error_lines": tally.errors[:20],
        "ask_latency_s": percentiles(tally.ask_s), "ingest_s": percentiles(tally.ingest_s),
        "rss_mb": samples,  # [(seconds since start, MB)], server process and children
        "load_avg": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
    }
    report["rss_summary"] = rss_summary(samples)
    return report


def rss_summary(samples: list[tuple[float, float]]) -> dict:
    """RSS at the end of the warm-up (the first fifth of the run, at least the first sample), at the
    end, and the peak: "flat after warm-up" means `growth_after_warmup_mb` stays small."""
    if not samples:
        return {}
    cut = samples[-1][0] / 5
    warm = next((mb for t, mb in samples if t >= cut), samples[0][1])
    after = [mb for t, mb in samples if t >= cut]
    return {"after_warmup_mb": warm, "end_mb": samples[-1][1], "peak_mb": max(mb for _, mb in samples),
            "max_after_warmup_mb": max(after), "growth_after_warmup_mb": round(samples[-1][1] - warm, 1)}


def format_report(r: dict) -> str:
    a, i, m = r["ask_latency_s"], r["ingest_s"], r["rss_summary"]
    lines = [f"{r['sessions']} sessions for {r['seconds']:.0f} s on {r['video']}: {r['answers']} answers, "
             f"{r['uploads']} uploads ingested, {r['errors']} errors",
             f"ask latency  s: p50 {a['p50']}  p90 {a['p90']}  p99 {a['p99']}  (n={a['n']})",
             f"upload→done  s: p50 {i['p50']}  p90 {i['p90']}  p99 {i['p99']}  (n={i['n']})"]
    if m:
        lines.append(f"server RSS  MB: after warm-up {m['after_warmup_mb']}, end {m['end_mb']}, peak {m['peak_mb']}, "
                     f"growth after warm-up {m['growth_after_warmup_mb']}")
        lines.append("RSS over time (s: MB): " + ", ".join(f"{t:.0f}: {mb:.0f}" for t, mb in r["rss_mb"]))
    lines.append(f"load average at the end {r['load_avg']} on {r['cpus']} CPUs")
    lines += [f"  error: {e}" for e in r["error_lines"]]
    return "\n".join(lines)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(sessions: int, extra: list[str]) -> tuple[subprocess.Popen, str]:
    """`python app.py --model tiny` on a free loopback port, with room for `sessions` sessions."""
    port = free_port()
    cmd = [sys.executable, str(ROOT / "app.py"), "--model", "tiny", "--server-name", "127.0.0.1",
           "--server-port", str(port), "--max-sessions", str(sessions), *extra]
    log = open(Path(tempfile.gettempdir()) / f"memstream-load-{port}.log", "w")  # noqa: SIM115 - kept to read
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    end = time.monotonic() + 600
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the demo server exited with {proc.returncode}; see {log.name}")
        try:
            urllib.request.urlopen(url, timeout=5)
            return proc, url
        except OSError:
            time.sleep(1.0)
    proc.terminate()
    raise SystemExit("the demo server did not answer within 10 minutes")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="drive N concurrent demo sessions through the HTTP API")
    ap.add_argument("--sessions", type=int, default=8, help="concurrent sessions (default 8)")
    ap.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    ap.add_argument("--asks", type=int, default=5, help="questions per upload (default 5)")
    ap.add_argument("--video", default=str(SAMPLE), help="the video each session uploads (default assets/sample.mp4)")
    ap.add_argument("--url", help="a running demo; without it `app.py --model tiny` is started here")
    ap.add_argument("--server-pid", type=int, help="the running demo's process id, for its RSS")
    ap.add_argument("--rss-every", type=float, default=10.0, help="seconds between RSS samples (default 10)")
    ap.add_argument("--out", help="also write the report as JSON here")
    ap.add_argument("--worker-process", action="store_true", help="start the server with --worker-process")
    ap.add_argument("--max-answers", type=int, help="start the server with this --max-answers (its default: 50)")
    args = ap.parse_args(argv)
    proc = None
    url, pid = args.url, args.server_pid
    if url is None:
        extra = (["--worker-process"] if args.worker_process else []) + \
            ([] if args.max_answers is None else ["--max-answers", str(args.max_answers)])
        proc, url = start_server(args.sessions, extra)
        pid = proc.pid
    try:
        report = run_load(url, args.sessions, args.minutes * 60, args.video, args.asks, pid, args.rss_every)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    print(format_report(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
