"""`lbdist validate-cluster FILE [FILE ...]`: check cluster configs offline before `ray up`, `kubectl apply`
or `serve deploy`.

    lbdist validate-cluster clusters/*.yaml clusters/kuberay/*.yaml clusters/serve/*.yaml

Prints `ok FILE` for each valid file and every problem of the others (`FILE: KEY.PATH: what is wrong and
what is allowed`, on stderr); a file with problems makes the command fail (exit 2). The checks are
lbdist.clusters.validate_file: Ray's own prepare_config/validate_config for launcher YAMLs, the KubeRay CRD
fields for manifests, ServeDeploySchema for Serve configs, each followed by lbdist's strict key tables.
"""
from __future__ import annotations

import argparse
import re
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "validate-cluster", help="check Ray launcher YAMLs, KubeRay manifests and Serve configs offline",
        description="Check cluster configs offline: Ray's own checks plus lbdist's strict key tables.")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="a Ray cluster launcher YAML, a KubeRay manifest or a Serve config")
    p.add_argument("--ray-version", default=None,
                   help="the Ray release pins must match (major.minor; default: the installed Ray)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lbdist.clusters import validate_files

    if args.ray_version is not None and not re.fullmatch(r"\d+\.\d+(\.\d+)?", args.ray_version):
        raise ValueError(f"--ray-version {args.ray_version!r}: give a Ray release as X.Y or X.Y.Z, e.g. 2.60.0")
    results = validate_files(args.files, expected_ray=args.ray_version)
    bad = {path: problems for path, problems in results.items() if problems}
    for path, problems in results.items():
        if problems:
            for line in problems:
                print(line, file=sys.stderr)
        else:
            print(f"ok {path}")
    if bad:
        count = sum(len(p) for p in bad.values())
        raise ValueError(f"{count} problem(s) in {len(bad)} of {len(results)} file(s): {', '.join(bad)}")
    return 0
