"""Render a prompts file on the Ray cluster: a pool of Generator actors, resumable, with a manifest.

    ray job submit --working-dir . -- python jobs/render_batch.py prompts.jsonl --out s3://bucket/batch-01 \
        --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --actors 1:16 --sp-degree 1 --steps 50 --schedule 6 \
        --adapters s3://bucket/adapters/wan-n6

Every option of `lbdist render` works here (`python jobs/render_batch.py --help`). Submit it again with the same
--out to render only the items that are missing or failed. Exit 0 when every item rendered, 1 (with one line
saying why) when some item failed or some line was bad, 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import sys

import ray

from lbdist.cli import render as render_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="render_batch.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    render_cli.register(sub)
    args = parser.parse_args(["render", *(sys.argv[1:] if argv is None else argv)])
    try:
        render_cli.config_from(args)  # bad arguments fail here, before Ray starts
        ray.init()
        return args.func(args)
    except ValueError as exc:
        print(f"render_batch.py: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a job ends with one line saying why
        print(f"render_batch.py: failed: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
