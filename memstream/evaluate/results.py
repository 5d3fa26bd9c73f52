"""The results file (one JSON object per line, one line per question) and the summary over it.

A line is appended and flushed as soon as a question is answered, so a run can stop at any
moment and be resumed: the key of a question is (video_id, index in its `conversations`), and a
rerun skips keys already in the file. A crash in the middle of a write leaves a partial last line;
it is dropped with a warning (that question is simply asked again). Every line records the
settings it was made with, and resuming with other settings is refused, so one file never mixes
two configurations.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import defaultdict
from pathlib import Path

from .errors import ResultsError

Key = tuple[str, int]  # (video_id, question index)


def record_key(record: dict) -> Key:
    return str(record["video_id"]), int(record["index"])


class ResultsFile:
    """Append-only JSONL results of one run configuration (`settings`, a flat JSON-able dict)."""

    def __init__(self, path: str | Path, settings: dict):
        self.path = Path(path)
        self.settings = settings
        if self.path.is_dir():
            raise ResultsError(f"Results path {self.path} is a directory; give a file name such as run.jsonl.")
        if not self.path.parent.is_dir():
            raise ResultsError(f"The folder of results file {self.path} does not exist.")

    def load(self) -> dict[Key, dict]:
        """Records already in the file, by key; repairs a partial last line (with a warning)."""
        if not self.path.exists():
            return {}
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise ResultsError(f"Results file {self.path} cannot be read ({exc.strerror}).") from exc
        lines = raw.split(b"\n")
        done: dict[Key, dict] = {}
        offset = 0
        for number, line in enumerate(lines, start=1):
            last = number == len(lines) or (number == len(lines) - 1 and lines[-1] == b"")
            if line.strip():
                record = self._parse(line, number, last, offset)
                if record is None:  # the partial last line was cut off the file
                    break
                done[record_key(record)] = record
            offset += len(line) + 1
        return done

    def _parse(self, line: bytes, number: int, last: bool, offset: int) -> dict | None:
        try:
            record = json.loads(line)
            record_key(record)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
            if not last:
                raise ResultsError(f"Line {number} of results file {self.path} is not a result record; "
                                   "use another --out or delete the file.") from exc
            with open(self.path, "r+b") as f:  # drop the partial line so appends start on a clean line
                f.truncate(offset)
            warnings.warn(f"Dropped the incomplete last line of {self.path} (an interrupted write); "
                          "that question will be answered again.", stacklevel=3)
            return None
        theirs = record.get("settings", {})
        for name, value in self.settings.items():
            if theirs.get(name) != value:
                raise ResultsError(f"Results file {self.path} was made with {name}={theirs.get(name)!r}, not "
                                   f"{value!r}; use another --out or the same settings.")
        return record

    def append(self, record: dict) -> None:
        """Write one record as a line and flush it to the OS at once."""
        with open(self.path, "ab") as f:
            if f.tell() > 0 and not self._ends_with_newline():
                f.write(b"\n")
            f.write(json.dumps(record, default=str).encode() + b"\n")
            f.flush()

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, 2)
            return f.read(1) == b"\n"


def summarise(records: list[dict]) -> dict:
    """Accuracy overall and per question_type (mean score: 1/0 for multiple choice, the judge's
    grade for open-ended), mean TTFT in seconds, and exact/contains rates of open-ended answers."""
    def acc(rs: list[dict]) -> float | None:
        return sum(r["score"] for r in rs) / len(rs) if rs else None

    by_type: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_type[r.get("question_type") or "untyped"].append(r)
    ttfts = [r["ttft_s"] for r in records if r.get("ttft_s") is not None]
    mc = [r for r in records if r["kind"] == "mc"]
    open_ = [r for r in records if r["kind"] == "open"]
    return {
        "n": len(records),
        "accuracy": acc(records),
        "by_question_type": {t: {"n": len(rs), "accuracy": acc(rs)} for t, rs in sorted(by_type.items())},
        "mean_ttft_s": sum(ttfts) / len(ttfts) if ttfts else None,
        "multiple_choice": {"n": len(mc), "accuracy": acc(mc)},
        "open_ended": {
            "n": len(open_), "score": acc(open_),
            "exact": sum(bool(r.get("exact")) for r in open_) / len(open_) if open_ else None,
            "contains": sum(bool(r.get("contains")) for r in open_) / len(open_) if open_ else None,
            "judges": sorted({r["judge"] for r in open_ if r.get("judge")}),
        },
        "errors": sum(1 for r in records if r.get("error")),
    }


def format_summary(summary: dict) -> str:
    """The summary as a few lines of text for the terminal."""
    def pct(x: float | None) -> str:
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"

    ttft = summary["mean_ttft_s"]
    def count(n: int) -> str:
        return f"{n} question{'' if n == 1 else 's'}"

    lines = [f"accuracy {pct(summary['accuracy'])} over {count(summary['n'])}"
             + (f" · mean TTFT {ttft:.3f} s" if ttft is not None else "")]
    width = max((len(t) for t in summary["by_question_type"]), default=0)
    for qtype, part in summary["by_question_type"].items():
        lines.append(f"  {qtype:<{width}}  {pct(part['accuracy']):>6}  ({count(part['n'])})")
    oe = summary["open_ended"]
    if oe["n"]:
        lines.append(f"open-ended: judge score {pct(oe['score'])} ({', '.join(oe['judges'])}) · exact "
                     f"{pct(oe['exact'])} · contains {pct(oe['contains'])} ({count(oe['n'])})")
    if summary["errors"]:
        lines.append(f"{count(summary['errors'])} could not be answered (see 'error' in the results)")
    return "\n".join(lines)
