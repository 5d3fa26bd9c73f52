"""Evaluation wall time with 1 and 2 Ray workers against the single-process run, and each worker's memory.

    python scripts/benchmarks/eval_ray.py [--model tiny|small] [--videos 8] [--repeats 2] [--tokens-per-frame 64]

One local Ray cluster (as many CPUs as the machine has, no dashboard, a small object store) is
started once and timed. Then, `--repeats` times, the same annotations (--videos copies of
assets/sample.mp4, 4 multiple-choice + 1 open question each, offline) are evaluated by: this
process alone (`run_eval` with a model loader, as without --ray), a pool of 1 worker and a pool of
2 workers, in a rotating order so that the load of other jobs on a shared machine falls on all
three alike. Every run includes its own model loading (a pool's actors are started and load the
model in parallel), as a CLI run would; Ray's start-up is reported separately (a CLI run pays it
once). Then the actors' own costs: spawn + model load (`ready`), one video, and each worker
process's resident memory (VmRSS now, VmHWM peak, read from /proc) after it.
Prints one JSON object (last line).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from memstream.engine import load  # noqa: E402
from memstream.evaluate import EvalSettings, load_annotations, run_eval  # noqa: E402
from memstream.evaluate.distributed import EvalWorker, RayPool, import_ray  # noqa: E402
from memstream.evaluate.judge import MatchJudge  # noqa: E402

QUESTIONS = [
    {"question": "What moves?", "choices": ["a ball", "a car", "a bird", "nothing"], "answer": "a car"},
    {"question": "Which colour?", "choices": ["red", "blue", "green"], "answer": "C"},
    {"question": "How many shapes?", "choices": ["1", "2", "3"], "answer": 0},
    {"question": "Where does it go?", "choices": ["left", "right"], "answer": "(B)"},
    {"question": "Describe the scene.", "answer": "a square"},
]


def proc_memory(pid: int) -> dict:
    """VmRSS and VmHWM (peak) of a process on this machine, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mib": fields["VmRSS"], "peak_rss_mib": fields["VmHWM"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--tokens-per-frame", type=int, default=64)
    args = p.parse_args()
    ray = import_ray()
    folder = Path(tempfile.mkdtemp(prefix="eval-ray-bench-"))
    ann = folder / "ann.json"
    ann.write_text(json.dumps([{"video_id": f"v{i}", "video_path": "sample.mp4", "conversations": QUESTIONS}
                               for i in range(args.videos)]))
    videos, _ = load_annotations(ann, REPO / "assets")
    settings = EvalSettings.from_options(model=args.model, max_new_tokens=8, tokens_per_frame=args.tokens_per_frame)
    load(model=args.model, device="cpu")  # build the checkpoint once, outside every timing

    t0 = time.perf_counter()
    ray.init(include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False,
             logging_level=logging.ERROR)
    ray_start_s = time.perf_counter() - t0
    cpus = int(ray.cluster_resources().get("CPU", 0))

    runs: dict[str, list[float]] = {"local": [], "ray-1": [], "ray-2": []}
    order = list(runs)
    for rep in range(args.repeats):
        for name in order[rep % 3:] + order[: rep % 3]:  # rotate who goes first
            answerer = ((lambda: load(model=args.model, device="cpu")) if name == "local"
                        else RayPool("auto", int(name[-1]), model=args.model, device="cpu"))
            t = time.perf_counter()
            run = run_eval(answerer, videos, settings, MatchJudge(), out=None, progress=False)
            runs[name].append(time.perf_counter() - t)
            assert run.answered == args.videos * len(QUESTIONS)
            print(f"{name}: {runs[name][-1]:.2f} s", file=sys.stderr)

    # the workers' own costs: spawn + load, one video, then their memory (2 at once, as in ray-2)
    actors = [ray.remote(EvalWorker).options(num_cpus=1).remote(args.model, None, "cpu", []) for _ in range(2)]
    t = time.perf_counter()
    pids = ray.get([a.ready.remote() for a in actors])
    ready_s = time.perf_counter() - t
    item, pending = videos[0], list(videos[0].questions)
    t = time.perf_counter()
    for a in actors:
        list(ray.get(list(a.run.remote(item, pending, settings, MatchJudge()))))
    one_video_s = (time.perf_counter() - t) / len(actors)
    memory = [proc_memory(pid) for pid in pids]
    threads = ray.get(actors[0].__ray_call__.remote(lambda self: __import__("torch").get_num_threads()))
    for a in actors:
        ray.kill(a)
    ray.shutdown()
    result = {
        "model": args.model, "videos": args.videos, "questions_per_video": len(QUESTIONS),
        "tokens_per_frame": args.tokens_per_frame, "cpus": cpus, "repeats": args.repeats,
        "ray_start_s": round(ray_start_s, 2),
        "wall_s": {k: {"median": round(statistics.median(v), 2), "min": round(min(v), 2), "max": round(max(v), 2)}
                   for k, v in runs.items()},
        "actor_spawn_and_load_s": round(ready_s, 2), "video_s_per_worker": round(one_video_s, 2),
        "worker_torch_threads": threads, "worker_memory": memory, "driver_memory": proc_memory(os.getpid()),
        "loadavg": open("/proc/loadavg").read().split()[:3], "measured": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
