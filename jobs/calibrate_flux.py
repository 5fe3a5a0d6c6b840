r"""Calibrate a FLUX.1 model (one LoRA per bridged step) on a Ray cluster.

    ray job submit --working-dir . -- python jobs/calibrate_flux.py \
        --model black-forest-labs/FLUX.1-dev --prompts prompts.txt --schedule 6 --steps 50 \
        --height 1024 --width 1024 --output s3://my-bucket/calibration --run-id flux-n6 --workers 8

Records the prompts with full compute on the workers (one per prompt at a time: images need no sequence
parallelism), streams every bridge's pairs to <output>/<run-id>/pairs, trains all bridges with Ray Train + DeepSpeed ZeRO-2, and writes the
adapter set to <output>/<run-id>/adapters (load it with `lbdist generate --adapters ...` or `Generator`).
Resubmitting the same --run-id resumes: recorded prompts and finished bridges are skipped, an interrupted
trainer continues from its last checkpoint. `ray job logs <id>` shows one progress line per event.
Exit 0 on success, 1 with a one-line reason otherwise. All options: `python jobs/calibrate_flux.py --help`.
"""
import sys

import ray

from lbdist.distributed import prepare, run_job


def main() -> int:
    try:
        job, layout = prepare(sys.argv[1:], family="flux")  # every bad input refused here, before the cluster
    except ValueError as exc:
        print(f"[calibrate] refused | {exc}", flush=True)
        return 1
    ray.init()
    return run_job(job, layout)


if __name__ == "__main__":
    sys.exit(main())
