"""Benchmarks: `python -m memstream bench SUBCOMMAND [...] [--json]`, SUBCOMMAND one of ingest, ttft,
efficiency, memory, compression, boundary, live, device.

Each subcommand prints one JSON object as its last line with `--json` (else `key: value` lines).
They feed synthetic frames (`common.SyntheticVideo`) straight to `Stream.add_frames`, so no video
decoding is timed, and default to the offline `tiny` model (`--model small` for a 3B-shaped one).
See BENCHMARKS.md for the commands, the machine and the figures.
"""

from __future__ import annotations

import argparse

from . import boundary, compression, device, efficiency, ingest, live, memory, ttft


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `bench` command and its subcommands to the CLI's subparsers."""
    bench = subparsers.add_parser(
        "bench", help="benchmarks: ingest, ttft, efficiency, memory, compression, boundary, live, device")
    sub = bench.add_subparsers(dest="bench", required=True)
    for module in (ingest, ttft, efficiency, memory, compression, boundary, live, device):
        module.add_parser(sub)
