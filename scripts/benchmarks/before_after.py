"""Paired before/after comparison of two versions of memstream on the tiny model, in one process.

    python scripts/benchmarks/before_after.py REV ingest|ttft|ttft-5|ttft-memstream|offline > out.jsonl

REV's `memstream/` (e.g. df99872, the commit before the policies/backbones restructuring) is exported
with `git archive` into a temporary directory and imported as `memstream_old`; the working tree's
`memstream` is the "new" side. Both load the same offline tiny checkpoint (same weights: their first
logits agree exactly), run on one thread, and take turns block by block (ingest) or question by
question (ttft), in a rotating order, so load from other jobs on a shared machine hits both alike:
the paired ratios (median over blocks or questions of new / old) are what to compare, not the
absolute times, which move with the load from one run to the next.

Variants: `old` (REV), `new` (the working tree) and, for the window policies, `merged` (the working
tree with the ingest context joined before the block, as the restructuring merged it: two copies of
the window per layer and block instead of one; see BENCHMARKS.md, "Hot spots found").
"""

from __future__ import annotations

import json
import shutil
import statistics as st
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]


def import_old(rev: str):
    tmp = Path(tempfile.mkdtemp(prefix="memstream-old-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "memstream"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
    shutil.move(tmp / "memstream", tmp / "memstream_old")
    sys.path[:0] = [str(tmp), str(ROOT)]
    import memstream_old

    return memstream_old


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def med(xs: list[float]) -> float:
    return st.median(xs)


def paired(a: list[float], b: list[float]) -> float:
    return med([x / y for x, y in zip(a, b)])


class Runs:
    def __init__(self, rev: str):
        old = import_old(rev)  # also puts the working tree on sys.path
        import memstream
        from memstream.bench.common import SyntheticVideo

        torch.set_num_threads(1)
        self.rev = rev
        self.eng = {"old": old.load("tiny", expert="tiny", device="cpu"),
                    "new": memstream.load("tiny", expert="tiny", device="cpu")}
        self.video = SyntheticVideo()

    def stream(self, var: str, policy: str, **opts):
        engine = self.eng["old" if var == "old" else "new"]
        s = engine.stream(policy=policy, fps=1.0, **{"tokens_per_frame": 64, **opts})
        if var == "merged":  # sinks + window joined first, then joined again with the block
            mem = s.memory
            mem.window_parts = lambda layer, m=mem: tuple(torch.cat(x, -2) for x in type(m).window_parts(m, layer))
        return s

    def ingest(self, policy: str, blocks: int, variants=("old", "merged", "new"), **opts) -> dict:
        streams = {v: self.stream(v, policy, **opts) for v in variants}
        t: dict[str, list[float]] = {v: [] for v in variants}
        la0, t0 = loadavg(), time.time()
        for i in range(blocks):
            pair = self.video.frames(2 * i, 2)
            for var in variants[i % len(variants):] + variants[:i % len(variants)]:
                a = time.perf_counter()
                streams[var].add_frames(pair)
                t[var].append(time.perf_counter() - a)
        tenth = max(1, blocks // 10)
        out = {"bench": "before-after-ingest", "rev": self.rev, "policy": policy, "opts": opts, "blocks": blocks,
               "loadavg": [la0, loadavg()], "wall_s": time.time() - t0}
        for v in variants:
            f, last = med(t[v][:tenth]), med(t[v][-tenth:])
            out[v] = {"first_ms": 1000 * f, "last_ms": 1000 * last, "ratio": last / f,
                      "window": streams[v].stats()["window_tokens"]}
        for a, b in (("merged", "old"), ("new", "old"), ("new", "merged")):
            if a in t and b in t:
                out[f"{a}/{b}"] = {"all": paired(t[a], t[b]), "first10": paired(t[a][:tenth], t[b][:tenth]),
                                   "last10": paired(t[a][-tenth:], t[b][-tenth:])}
        return out

    def ttft(self, minutes: float, policies: list[str], offline: bool = False, questions: int = 7) -> dict:
        from memstream.bench.ttft import QUESTIONS

        n = int(minutes * 60) // 2 * 2
        times = np.arange(n) / 1.0
        askers = {}
        for var in ("old", "new"):
            for p in policies:
                s = self.stream(var, p)
                for start in range(0, n, 8):  # as bench ttft feeds it
                    s.add_frames(self.video.frames(start, min(8, n - start)), times[start:start + 8])
                askers[(var, p)] = lambda q, s=s: s.ask(q, max_new_tokens=1)
            if offline:
                frames = self.video.frames(0, n)
                askers[(var, "offline")] = lambda q, e=self.eng[var], fr=frames: e.reference_answer(
                    fr, times, q, fps=1.0, tokens_per_frame=64, max_new_tokens=1)
        keys = list(askers)
        wall: dict = {k: [] for k in keys}
        eng: dict = {k: [] for k in keys}
        la0 = loadavg()
        for i in range(questions):
            q = QUESTIONS[i % len(QUESTIONS)]
            for k in keys[i % len(keys):] + keys[:i % len(keys)]:
                a = time.perf_counter()
                ans = askers[k](q)
                wall[k].append(time.perf_counter() - a)
                eng[k].append(ans.ttft_s)
        out = {"bench": "before-after-ttft", "rev": self.rev, "minutes": minutes, "questions": questions,
               "loadavg": [la0, loadavg()]}
        for p in policies + (["offline"] if offline else []):
            out[p] = {var: {"wall_ms": 1000 * med(wall[(var, p)]), "engine_ms": 1000 * med(eng[(var, p)])}
                      for var in ("old", "new")}
            out[p]["new/old wall"] = paired(wall[("new", p)], wall[("old", p)])
            out[p]["new/old engine"] = paired(eng[("new", p)], eng[("old", p)])
        return out


def main(argv: list[str]) -> int:
    rev, mode = argv[0], argv[1]
    runs = Runs(rev)
    if mode == "ingest":
        jobs = [lambda: runs.ingest("rekv", 2000), lambda: runs.ingest("rekv", 2000, n_local=1500),
                lambda: runs.ingest("rekv", 300, tokens_per_frame=256), lambda: runs.ingest("full", 600),
                lambda: runs.ingest("memstream", 2000), lambda: runs.ingest("hermes", 2000, variants=("old", "new"))]
    elif mode == "ttft":
        jobs = [lambda: runs.ttft(2, ["rekv", "full", "memstream", "hermes"], offline=True),
                lambda: runs.ttft(10, ["rekv", "full", "memstream", "hermes"])]
    elif mode == "ttft-5":
        jobs = [lambda: runs.ttft(5, ["rekv", "full", "memstream", "hermes"], questions=15)]
    elif mode == "ttft-memstream":  # more questions where 7 were too few to tell
        jobs = [lambda: runs.ttft(2, ["memstream"], questions=80)]
    elif mode == "offline":
        jobs = [lambda: runs.ttft(1, [], offline=True, questions=16)]
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    for job in jobs:
        print(json.dumps(job()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
