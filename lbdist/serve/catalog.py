"""What the ingress checks requests against without loading the model: `ModelFacts` and the adapter catalog.

A generator replica publishes `ModelFacts` (the `ModelInfo` requests are resolved against, plus the transformer's
class names and config digest that adapter sets are matched with) to `<storage>/service/<model key>/model.json`
when it has loaded the model. The ingress reads it, so it validates sizes, frames, formats and adapter sets
exactly as the replica would, without holding the model and without waiting for a busy replica. Adapter sets are
checked from their manifest (`lbdist_adapters.json`) alone: family, transformer class and config digest, the
schedule, and whether every bridge of the schedule has an adapter.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field

from .. import storage
from ..bridge.schedule import Schedule
from ..generation.request import GenerationRequest, ModelInfo
from .schemas import ApiError

MANIFEST = "lbdist_adapters.json"  # lbdist.bridge.adapter_set.MANIFEST (that module imports torch)


def model_key(model: str) -> str:
    """A file-name-safe key of a model reference (readable prefix + digest)."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", model)[:48]
    return f"{readable}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class ModelFacts:
    """A loaded model as the ingress needs it.

    info: the `ModelInfo` requests are resolved against (sizes, frames, formats, defaults).
    transformer_classes: class names of the transformer and its bases (an adapter set names one of them).
    config_digest: digest of the transformer config (`lbdist.bridge.config_digest`); adapter sets record it.
    model: the model reference; replica: the replica that wrote the facts; written_at: unix time.
    """

    info: ModelInfo
    transformer_classes: tuple[str, ...]
    config_digest: str
    model: str
    replica: str = ""
    written_at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        data = asdict(self)
        data["info"]["defaults"] = dict(self.info.defaults)
        return json.dumps(data, default=_jsonable)

    @classmethod
    def from_json(cls, text: str) -> "ModelFacts":
        data = json.loads(text)
        info = dict(data["info"])
        info["branches"] = tuple(info.get("branches", ("cond",)))
        return cls(info=ModelInfo(**info), transformer_classes=tuple(data["transformer_classes"]),
                   config_digest=data["config_digest"], model=data["model"], replica=data.get("replica", ""),
                   written_at=float(data.get("written_at", 0.0)))


def _jsonable(value):
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)


def facts_path(root: str, model: str) -> str:
    return storage.join(root, "service", model_key(model), "model.json")


def publish_facts(root: str, facts: ModelFacts) -> str:
    return storage.write_text(facts_path(root, facts.model), facts.to_json())


def read_facts(root: str, model: str) -> ModelFacts | None:
    path = facts_path(root, model)
    return ModelFacts.from_json(storage.read_text(path)) if storage.exists(path) else None


class AdapterCatalog:
    """The adapter sets a service offers (id -> reference) and their manifests (read once, cached)."""

    def __init__(self, refs: dict[str, str]):
        self.refs = dict(refs)
        self._manifests: dict[str, dict | None] = {}

    def ids(self) -> list[str]:
        return sorted(self.refs)

    def known(self, adapter_id: str) -> None:
        if adapter_id not in self.refs:
            raise ApiError(400, "unknown_adapter_set", f"adapters {adapter_id!r} is not an adapter set of this service; "
                           f"known ids: {self.ids() or 'none (the service has no adapter sets)'}", "adapters")

    def manifest(self, adapter_id: str) -> dict | None:
        """The set's manifest, or None where only the replica can read it (a Hub id: fetched there)."""
        if adapter_id not in self._manifests:
            from ..refs import resolve_ref

            text = self.refs[adapter_id]
            try:
                ref = resolve_ref(text, "adapters")
                manifest = None if ref.kind == "hub" else json.loads(
                    storage.read_text(storage.join(ref.value, MANIFEST)))
            except (OSError, ValueError) as exc:
                raise ApiError(500, "adapter_set_unreadable", f"adapter set {adapter_id!r} ({text!r}) cannot be "
                               f"read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                               "adapters") from None
            if manifest is not None and not isinstance(manifest, dict):
                raise ApiError(500, "adapter_set_unreadable", f"adapter set {adapter_id!r}: {MANIFEST} is not a "
                               "JSON object", "adapters")
            self._manifests[adapter_id] = manifest
        return self._manifests[adapter_id]

    def check(self, request: GenerationRequest, facts: ModelFacts) -> None:
        """ApiError(400, adapter_mismatch) unless the request's set fits the model and the request's schedule."""
        if request.adapters is None:
            return
        self.known(request.adapters)
        manifest = self.manifest(request.adapters)
        if manifest is None:
            return
        try:
            self._check(request, facts, manifest)
        except (KeyError, TypeError, ValueError) as exc:  # a malformed manifest (the replica would refuse it too)
            raise ApiError(500, "adapter_set_unreadable", f"adapter set {request.adapters!r}: malformed {MANIFEST} "
                           f"({type(exc).__name__}: {exc})", "adapters") from None

    def _check(self, request: GenerationRequest, facts: ModelFacts, manifest: dict) -> None:
        problems = []
        family = facts.info.family
        if manifest.get("family") != family or manifest.get("transformer_class") not in facts.transformer_classes:
            problems.append(f"model: set is for {manifest.get('transformer_class')} ({manifest.get('family')}), "
                            f"the service runs {facts.transformer_classes[0]} ({family})")
        elif manifest.get("config_digest") != facts.config_digest:
            problems.append(f"transformer config digest: set {manifest.get('config_digest')}, service "
                            f"{facts.config_digest} (same class, different size or settings)")
        theirs = Schedule.from_dict(manifest["schedule"])
        ours = request.bridge_schedule()
        if ours != theirs:
            problems.append(f"schedule: set was calibrated for {theirs.description} over {theirs.num_steps} steps, "
                            f"the request asks for {request.schedule!r} over {request.num_inference_steps} steps")
        if problems:
            raise ApiError(400, "adapter_mismatch", f"adapter set {request.adapters!r} does not fit this request: "
                           + "; ".join(problems), "adapters")
        self._check_coverage(request, manifest, theirs)

    @staticmethod
    def _check_coverage(request: GenerationRequest, manifest: dict, schedule: Schedule) -> None:
        have = {(int(b["step"]), b["branch"]) for b in manifest.get("bridges", [])}
        missing = [(s, b) for s in schedule.bridged_steps for b in manifest.get("branches", ["cond"])
                   if (s, b) not in have]
        if missing and not request.allow_uncovered:
            shown = ", ".join(f"{s}/{b}" for s, b in missing[:8]) + (" ..." if len(missing) > 8 else "")
            raise ApiError(400, "adapter_mismatch", f"adapter set {request.adapters!r} covers {len(have)} of "
                           f"{len(have) + len(missing)} bridges of {schedule.description}; uncovered (step/branch): "
                           f"{shown}; pass allow_uncovered=true to run those steps uncalibrated", "allow_uncovered")
