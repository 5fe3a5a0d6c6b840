"""`lbdist serve run CONFIG`: serve a Ray Serve config file (the OpenAI Videos-shaped jobs API) locally.

    lbdist serve run clusters/serve/video.yaml                 # local Ray on loopback; Ctrl-C stops
    lbdist serve run clusters/serve/video.yaml --dry-run       # check the args, print the deployments' options

The config is the one `serve deploy` takes (`import_path: lbdist.serve.app:build_app`, `args: {...}`); the args of
every lbdist application are checked strictly first (an unknown or out-of-range key is an error naming it).
"""
from __future__ import annotations

import argparse
import json
import os


def run(args: argparse.Namespace) -> int:
    from ..serve.settings import deployment_options, load_config, wants_gpus

    _, apps = load_config(args.config)
    if args.dry_run:
        for name, settings in apps.items():
            gpus = wants_gpus(settings, None)
            print(json.dumps({"application": name, "args": settings.model_dump(), "gpus": gpus,
                              "deployments": deployment_options(settings, gpus)}, indent=1, default=str))
        return 0
    if args.address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local Ray stays on 127.0.0.1
    import signal

    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # kill / a process manager: shut Serve and Ray down cleanly
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    from ..serve.app import run_config

    run_config(args.config, address=args.address, num_cpus=args.num_cpus, block=True, timeout_s=args.timeout,
               metrics_port=args.metrics_port, dashboard=args.dashboard)
    return 0


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve video/image generation with Ray Serve (OpenAI Videos-shaped jobs API)")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    r = verbs.add_parser("run", help="deploy a Serve config file on a local (or given) Ray cluster and serve it")
    r.add_argument("config", help="Serve config YAML (import_path: lbdist.serve.app:build_app)")
    r.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    r.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance")
    r.add_argument("--metrics-port", type=int, default=None,
                   help="local Ray only: serve Prometheus metrics at http://127.0.0.1:PORT/metrics")
    r.add_argument("--dashboard", action="store_true", help="local Ray only: start the Ray dashboard too")
    r.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the applications to run")
    r.add_argument("--dry-run", action="store_true", help="only check the config and print the deployment options")
    r.set_defaults(func=run)
