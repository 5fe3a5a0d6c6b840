r"""Calibrate a HunyuanVideo model (one LoRA per bridged step) on a Ray cluster.

    ray job submit --working-dir . -- python jobs/calibrate_hunyuan.py \
        --model hunyuanvideo-community/HunyuanVideo --prompts prompts.txt --schedule 6 --steps 50 \
        --height 544 --width 960 --frames 49 --output s3://my-bucket/calibration --run-id hunyuan-n6 --workers 8

Records the prompts with full compute on groups of workers (sequence parallel inside a group), streams every
bridge's pairs to <output>/<run-id>/pairs, trains all bridges with Ray Train + DeepSpeed ZeRO-2, and writes the
adapter set to <output>/<run-id>/adapters (load it with `lbdist generate --adapters ...` or `Generator`).
Resubmitting the same --run-id resumes: recorded prompts and finished bridges are skipped, an interrupted
trainer continues from its last checkpoint. `ray job logs <id>` shows one progress line per event.
Exit 0 on success, 1 with a one-line reason otherwise. All options: `python jobs/calibrate_hunyuan.py --help`.
"""
import sys

import ray

from lbdist.distributed import prepare, run_job


def main() -> int:
    try:
        job, layout = prepare(sys.argv[1:], family="hunyuan_video")  # every bad input refused here, before the cluster
    except ValueError as exc:
        print(f"[calibrate] refused | {exc}", flush=True)
        return 1
    ray.init()
    return run_job(job, layout)


if __name__ == "__main__":
    sys.exit(main())
