"""The one module of lbdist that imports xfuser (xDiT): parallel state, sequence-parallel wrappers, CPU compat.

Everything lbdist does with xfuser goes through the functions here, called inside each worker process:

    xf = load_xfuser()                                   # import (with the CPU compat patches when no CUDA)
    init_parallel(rank=r, world_size=n, init_method="tcp://host:port", backend="gloo", ulysses=n, ring=1)
    pipe.transformer = wrap_transformer(pipe.transformer) # xfuser's SP subclass, same weights, same blocks
    init_runtime(pipe, ulysses=n, ring=1)                 # xfuser's DiT runtime state over this pipeline
    ... pipe(...) / transformer(...) collectively on every rank ...
    destroy_parallel()

xfuser's wrappers subclass the diffusers transformers (each family's spec names its wrapper, `ModelSpec.xfuser_wrapper`)
and keep diffusers' block loop, so `lbdist.models.get_spec` finds the spec and the bridge hooks see each rank's shard.

CPU compatibility (`apply_cpu_compat`): xfuser 0.7 targets accelerators. With no CUDA it (1) refuses to import
(`xfuser.envs.get_device_version` raises "No Accelerators", read at import through `CUDA_VERSION`), (2) picks no
process-group backend (`get_torch_distributed_backend` raises), (3) reports yunchang missing
(`has_long_ctx_attn` is False without CUDA, which silently turns Ulysses off), (4) leaves
`xfuser.model_executor.layers.usp.PROCESS_GROUP` None, and (5) imports the undeclared `triton` through
`xfuser.core.sparge_attention.block_mask` (sparse attention only). The compat installs an import hook that
patches `xfuser.envs` right after it executes (device version None, backend "gloo", long-ctx attention on) and
`usp` right after it executes (`PROCESS_GROUP` = yunchang's), and, only where triton is absent, provides a stub
`block_mask` module whose one function raises. A fake `triton` package is never installed (torch._dynamo
probes for it). Nothing is patched where CUDA is present: the GPU path is xfuser as shipped.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import torch

INSTALL_HINT = "pip install 'lbdist[sp]'"

_ENVS = "xfuser.envs"
_USP = "xfuser.model_executor.layers.usp"
_BLOCK_MASK = "xfuser.core.sparge_attention.block_mask"
_compat_applied = False


# --- CPU compatibility -----------------------------------------------------------------------------------
def _patch_envs(envs: types.ModuleType) -> None:
    envs.get_device_version = lambda: None
    envs.get_torch_distributed_backend = lambda: "gloo"
    envs.PACKAGES_CHECKER.packages_info["has_long_ctx_attn"] = True


def _patch_usp(usp: types.ModuleType) -> None:
    from yunchang.globals import PROCESS_GROUP

    usp.PROCESS_GROUP = PROCESS_GROUP


def _block_mask_stub(module: types.ModuleType) -> None:
    def get_block_map_meansim(*args, **kwargs):
        raise RuntimeError("xfuser's Sparge sparse attention needs triton, which is not installed here")

    module.get_block_map_meansim = get_block_map_meansim
    module.__doc__ = "lbdist stub: triton is absent, so xfuser's triton-only Sparge block mask is unavailable."


class _ExecThenPatch(importlib.abc.Loader):
    """Runs the real loader of a module, then a patch function on the fresh module."""

    def __init__(self, loader, patch):
        self.loader, self.patch = loader, patch

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        self.patch(module)


class _StubLoader(importlib.abc.Loader):
    def __init__(self, fill):
        self.fill = fill

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        self.fill(module)


class _XfuserCpuFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that hands out patched specs for exactly the xfuser modules named above."""

    def __init__(self, stub_block_mask: bool):
        self.stub_block_mask = stub_block_mask

    def find_spec(self, fullname, path, target=None):
        if fullname == _BLOCK_MASK and self.stub_block_mask:
            return importlib.machinery.ModuleSpec(fullname, _StubLoader(_block_mask_stub))
        patch = {_ENVS: _patch_envs, _USP: _patch_usp}.get(fullname)
        if patch is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _ExecThenPatch(spec.loader, patch)
        return spec


def apply_cpu_compat() -> bool:
    """Make xfuser 0.7 importable and usable on gloo where no CUDA device exists (see the module docstring).

    Must run before xfuser is first imported in the process; a no-op where CUDA is available or when already
    applied. Returns whether the patches are in effect.
    """
    global _compat_applied
    if _compat_applied:
        return True
    if torch.cuda.is_available():
        return False
    if any(name == "xfuser" or name.startswith("xfuser.") for name in sys.modules):
        raise RuntimeError("xfuser was imported before lbdist's CPU compatibility was applied; import xfuser only "
                           "through lbdist.parallel.xdit.load_xfuser()")
    stub = importlib.util.find_spec("triton") is None
    sys.meta_path.insert(0, _XfuserCpuFinder(stub_block_mask=stub))
    _compat_applied = True
    return True


def installed(name: str) -> bool:
    """Whether `name` can be imported (False for an import blocked with `sys.modules[name] = None`)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check_installed() -> None:
    missing = [name for name in ("xfuser", "yunchang", "accelerate") if not installed(name)]
    if missing:
        raise ImportError(f"sequence parallelism needs {', '.join(missing)}, which "
                          f"{'is' if len(missing) == 1 else 'are'} not installed: {INSTALL_HINT}")


def load_xfuser() -> types.ModuleType:
    """Import xfuser (CPU compat first where there is no CUDA); a missing install names the extra."""
    check_installed()
    apply_cpu_compat()
    try:
        import xfuser
        import xfuser.core.distributed  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"xfuser failed to import ({exc}); reinstall it with {INSTALL_HINT}") from exc
    return xfuser


# --- parallel state ----------------------------------------------------------------------------------------
def init_parallel(*, rank: int, world_size: int, init_method: str, backend: str, ulysses: int, ring: int,
                  local_rank: int = 0, cfg: int = 1) -> None:
    """Join the torch.distributed group and build xfuser's groups (cfg x Ulysses x ring = world_size, no PP split).

    `local_rank` is the CUDA device index: 0 when each Ray actor sees only its own GPU (Ray's default).
    With `cfg` 2 the sequence-parallel groups are the two halves of consecutive ranks (`0..sp-1`, `sp..2sp-1`).
    xfuser is told the halves are data-parallel replicas, not CFG ranks: its CFG degree makes the FLUX and
    HunyuanVideo wrappers split the batch of one call, whereas lbdist's CFG-parallel (`lbdist.parallel.cfg`)
    keeps diffusers' one-branch-per-call pipeline; both give the same rank layout.
    """
    load_xfuser()
    from xfuser.core.distributed import parallel_state as ps

    if ps.model_parallel_is_initialized():
        raise RuntimeError("xfuser's parallel state is already initialized in this process; call destroy_parallel()")
    ps.init_distributed_environment(world_size=world_size, rank=rank, distributed_init_method=init_method,
                                    local_rank=local_rank, backend=backend)
    ps.initialize_model_parallel(data_parallel_degree=cfg, sequence_parallel_degree=ulysses * ring,
                                 ulysses_degree=ulysses, ring_degree=ring, backend=backend)


def destroy_parallel() -> None:
    """Tear down xfuser's groups and the torch.distributed group (safe to call twice)."""
    if "xfuser" not in sys.modules:
        return
    from xfuser.core.distributed import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.destroy_distributed_environment()


def parallel_info() -> dict:
    """World, sequence-parallel, Ulysses and ring sizes and ranks of this process, as xfuser sees them."""
    from xfuser.core.distributed import parallel_state as ps

    return {"world_size": torch.distributed.get_world_size(), "rank": torch.distributed.get_rank(),
            "sp_size": ps.get_sequence_parallel_world_size(), "sp_rank": ps.get_sequence_parallel_rank(),
            "ulysses": ps.get_ulysses_parallel_world_size(), "ring": ps.get_ring_parallel_world_size(),
            "cfg": ps.get_data_parallel_world_size(),
            "backend": torch.distributed.get_backend()}


def init_runtime(pipe_or_transformer, *, ulysses: int, ring: int, attention_backend: str | None = None,
                 cfg: int = 1) -> None:
    """xfuser's DiT runtime state (attention backend, step counter) over `pipe` (or a bare transformer).

    xfuser builds it from an xFuser pipeline; the wrappers only need an object with `.transformer`, so a plain
    diffusers pipeline (or a namespace holding a transformer, for benchmarks) serves.
    """
    load_xfuser()
    from xfuser.config import xFuserArgs
    from xfuser.core.distributed.runtime_state import get_runtime_state, initialize_runtime_state

    holder = pipe_or_transformer
    if isinstance(pipe_or_transformer, torch.nn.Module):
        holder = types.SimpleNamespace(transformer=pipe_or_transformer)
    args = xFuserArgs(model="lbdist", ulysses_degree=ulysses, ring_degree=ring, attention_backend=attention_backend,
                      data_parallel_degree=cfg)  # the CFG halves, as in init_parallel
    engine_config, _ = args.create_config()
    initialize_runtime_state(pipeline=holder, engine_config=engine_config)
    state = get_runtime_state()
    # xFuser pipelines set these per call (`set_input_parameters`); the SP wrappers read them only on PipeFusion
    # paths (FLUX single blocks read the text length there), which lbdist does not use.
    for name, default in (("max_condition_sequence_length", 0), ("split_text_embed_in_sp", True)):
        if not hasattr(state, name):
            setattr(state, name, default)


# --- wrappers ----------------------------------------------------------------------------------------------
def wrapper_class(family: str) -> type:
    """xfuser's sequence-parallel subclass of the family's transformer (named by the family's model spec)."""
    from ..models import families, get_spec_by_family

    load_xfuser()
    wrapper = get_spec_by_family(family).xfuser_wrapper
    if wrapper is None:
        supported = [f for f in families() if get_spec_by_family(f).xfuser_wrapper is not None]
        raise ValueError(f"no xfuser sequence-parallel wrapper for family {family!r}; families with one: {supported}")
    module, name = wrapper
    return getattr(importlib.import_module(module), name)


def build_wrapped(family: str, config: dict) -> torch.nn.Module:
    """A new xfuser-wrapped transformer from a diffusers config (random init; under the caller's device/dtype)."""
    return wrapper_class(family).from_config(config)


def wrap_transformer(transformer: torch.nn.Module) -> torch.nn.Module:
    """The same transformer as xfuser's SP subclass: parameters are moved over, not copied.

    The wrapper is built with its parameters on the meta device, then takes the original's parameters and
    persistent buffers (`load_state_dict(assign=True)`) and its non-persistent buffers (RoPE tables) by name.
    Wrap before enabling the bridge: hooks belong to the module object the pipeline calls.
    """
    from accelerate import init_empty_weights

    from ..models import get_spec

    family = get_spec(transformer).family
    cls = wrapper_class(family)
    if isinstance(transformer, cls):
        return transformer
    if getattr(transformer, "_diffusers_hook", None) is not None:
        raise ValueError("the transformer already has diffusers hooks (a cache or the lbdist bridge): wrap it for "
                         "sequence parallelism first, then enable the bridge on the wrapper")
    param = next(transformer.parameters())
    with init_empty_weights(include_buffers=False):
        wrapped = cls.from_config(dict(transformer.config))
    wrapped.load_state_dict(transformer.state_dict(), strict=True, assign=True)
    originals = dict(transformer.named_buffers())
    for name, buf in list(wrapped.named_buffers()):
        owner_name, _, leaf = name.rpartition(".")
        owner = wrapped.get_submodule(owner_name) if owner_name else wrapped
        source = originals.get(name)
        owner._buffers[leaf] = source if source is not None else buf.to(param.device)
    wrapped.train(transformer.training)
    wrapped.requires_grad_(any(p.requires_grad for p in transformer.parameters()))
    return wrapped

