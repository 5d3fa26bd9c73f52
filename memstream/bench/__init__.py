"""Benchmarks: `python -m memstream bench ingest|ttft|efficiency|memory|compression|live|device [...] [--json]`.

Each subcommand prints one JSON object as its last line with `--json` (else `key: value` lines).
They feed synthetic frames (`common.SyntheticVideo`) straight to `Stream.add_frames`, so no video
decoding is timed, and default to the offline `tiny` model (`--model small` for a 3B-shaped one).
See BENCHMARKS.md for the commands, the machine and the figures.
"""

from __future__ import annotations

import argparse

from . import compression, device, efficiency, ingest, live, memory, ttft


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `bench` command and its subcommands to the CLI's subparsers."""
    bench = subparsers.add_parser(
        "bench", help="benchmarks: ingest, ttft, efficiency, memory, compression, live, device")
    sub = bench.add_subparsers(dest="bench", required=True)
    for module in (ingest, ttft, efficiency, memory, compression, live, device):
        module.add_parser(sub)
