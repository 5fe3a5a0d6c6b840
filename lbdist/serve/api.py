"""The HTTP routes (FastAPI) over a `JobService`: the OpenAI Videos / Images shape plus health and models.

    POST   /v1/videos                  create a video job -> 202, the job (status queued)
    GET    /v1/videos                  list jobs (limit, after, order)
    GET    /v1/videos/{id}             one job: status, progress (step i of T), elapsed, ETA, result or error
    GET    /v1/videos/{id}/content     the video (mp4 / gif), streamed
    DELETE /v1/videos/{id}             cancel: queued at once, running at the next step boundary (every rank)
    POST   /v1/images/generations      one image, synchronously: b64 JSON or PNG bytes
    GET    /v1/models                  the served model (OpenAI list shape)
    GET    /health                     the service's state (503 while the model loads)

Errors are JSON `{"error": {"message", "type", "param", "code"}}`; see `lbdist.serve.schemas`. The app is built in
the ingress replica (`VideoIngress.__serve_build_asgi_app__`); its lifespan starts and stops the service's sweeper.
"""
from __future__ import annotations

import base64
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from .schemas import (ApiError, ImageCreateRequest, ImageResponse, VideoCreateRequest, VideoJob, VideoList,
                      pydantic_error)
from .service import JobService

log = logging.getLogger("lbdist.serve")


def create_api(service: JobService) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app):
        await service.start()
        yield
        await service.stop()

    app = FastAPI(title="lbdist", description="LearniBridge-accelerated video and image generation (OpenAI Videos "
                  "API shape)", version="0.1.0", lifespan=lifespan)
    _errors(app)

    @app.post("/v1/videos", status_code=202, response_model=VideoJob)
    async def create_video(body: VideoCreateRequest, response: Response) -> VideoJob:
        job = await service.create_video(body)
        response.headers["Location"] = f"/v1/videos/{job.id}"
        return job

    @app.get("/v1/videos", response_model=VideoList)
    async def list_videos(limit: int = 20, after: str | None = None, order: str = "desc") -> VideoList:
        return await service.list_videos(limit, after, order)

    @app.get("/v1/videos/{video_id}", response_model=VideoJob)
    async def get_video(video_id: str) -> VideoJob:
        return await service.get_video(video_id)

    @app.get("/v1/videos/{video_id}/content")
    async def content(video_id: str) -> StreamingResponse:
        path, content_type, size = await service.content(video_id)
        name = f"{video_id}.{path.rsplit('.', 1)[-1]}"
        return StreamingResponse(service.store.read_chunks(path), media_type=content_type, headers={
            "Content-Length": str(size), "Content-Disposition": f'attachment; filename="{name}"'})

    @app.delete("/v1/videos/{video_id}", response_model=VideoJob)
    async def cancel_video(video_id: str) -> VideoJob:
        return await service.cancel_video(video_id)

    @app.post("/v1/images/generations", response_model=ImageResponse)
    async def create_image(body: ImageCreateRequest):
        out, fmt = await service.create_image(body)
        if fmt == "png":
            return Response(out["png"], media_type="image/png")
        return ImageResponse(created=int(time.time()), data=[{"b64_json": base64.b64encode(out["png"]).decode()}],
                             timings=out.get("timings", {}), calls=out.get("calls", {}))

    @app.get("/v1/models")
    async def models() -> dict:
        name = service.settings.served_name
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "lbdist"}]}

    @app.get("/health")
    async def health():
        body = await service.health()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    return app


def _errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        err = ApiError(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}")
        return JSONResponse(err.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        model = ImageCreateRequest if request.url.path.endswith("/images/generations") else VideoCreateRequest
        err = pydantic_error(list(exc.errors()), model)
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(Exception)
    async def internal(_request: Request, exc: Exception):
        log.exception("lbdist serve: internal error")
        err = ApiError(500, "internal_error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return JSONResponse(err.body(), status_code=500)
