"""Ray Serve: bridged video and image generation as an async jobs API in the OpenAI Videos shape.

    serve deploy clusters/serve/video.yaml        # import_path: lbdist.serve.app:build_app
    lbdist serve run clusters/serve/video.yaml    # local run

    curl -X POST localhost:8000/v1/videos -H 'content-type: application/json' -d '{"prompt": "a red circle"}'
    curl localhost:8000/v1/videos/<id>            # queued | in_progress (step i of T, ETA) | completed | ...
    curl -o out.mp4 localhost:8000/v1/videos/<id>/content

Modules: `settings` (the application args), `schemas` (HTTP models and errors), `jobs` (durable job records),
`catalog` (model facts and adapter manifests the ingress validates with), `runner` (a replica's generator and
job loop), `service` (the ingress's logic), `api` (FastAPI routes) and `app` (the only module importing
`ray.serve`: deployments and `build_app`). Importing this package imports none of them.
"""
__all__ = ["ServeSettings", "build_app", "parse_settings"]

_LAZY = {"ServeSettings": ".settings", "parse_settings": ".settings", "build_app": ".app"}


def __getattr__(name: str):
    from .._lazy import lazy_attribute

    return lazy_attribute(__name__, _LAZY, name)
