"""Data parallelism and memory for ``pointdiff.training.loop.train``: DDP, or FSDP
(``TrainConfig.fsdp``), with the gradient-sync switch, the gathering of full state for
checkpoints, and activation checkpointing (``TrainConfig.grad_checkpointing``).

PyTorch's own FSDP2 (``torch.distributed.fsdp.fully_shard``): parameters become ``DTensor``s
sharded on dim 0 over a 1-D mesh of all ranks. Each transformer block is one unit (all-gathered
just before its forward/backward and freed after), and the trained module is the root.
Optimizer states and the EMA copy stay sharded, so their memory is divided by the number of
ranks (README "Training at scale"). The model and its EMA copy reach the GPU only as shards:
they are built (and a resumed run loaded) on the CPU, and each unit moves to the device as it is
sharded. On CUDA the all-gathered weights are bf16 and gradients are reduced in fp32
(``MixedPrecisionPolicy``); the sharded fp32 weights are the optimizer's.

Checkpoints keep the unsharded format of a DDP run: every rank takes part in gathering full
tensors, which land on rank 0's CPU; rank 0 then calls ``save_checkpoint`` with plain modules
and an ``Optimizer.state_dict()``-shaped (integer-keyed) optimizer state
(``torch.distributed.checkpoint.state_dict``). Loading is the reverse, so a run resumes with or
without FSDP.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain

import torch
import torch.distributed as tdist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

#: Units of their own: our transformer blocks and open_clip's text blocks (matched by name so
#: that only ``pointdiff.conditioning.text`` imports open_clip). Only blocks entered through
#: ``forward`` may be units: FSDP all-gathers in forward hooks, so the SDF decoder's
#: cross-attention blocks (``project_kv`` is called from outside) stay in their parent's unit.
BLOCK_NAMES = ("ResidualBlock", "ResidualAttentionBlock")

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


# ----------------------------------------------------------------------------------------------
# Wrapping


def make_mesh(device: torch.device) -> DeviceMesh:
    """A 1-D mesh over all ranks on ``device``'s type (gloo on CPU, NCCL on CUDA)."""
    return init_device_mesh(device.type, (tdist.get_world_size(),))


def shard(module: nn.Module, mesh: DeviceMesh, mp_policy: MixedPrecisionPolicy | None = None):
    """``fully_shard`` bottom-up, in place: each block (``BLOCK_NAMES``) of ``module``, then
    ``module`` itself as the root unit (a text encoder is entered through ``embed()``, not
    ``forward``, so its top-level weights belong to the root too). A CPU module moves to the
    mesh's device unit by unit, so only one unit is ever there in full.

    Parameter names and order are unchanged (an optimizer built afterwards numbers its
    parameters as on an unsharded module). A module that is never run (the EMA copy) may be
    sharded too: its parameters then live as shards with the same layout as the trained ones.
    """
    policy = {"mp_policy": mp_policy} if mp_policy is not None else {}
    for block in module.modules():
        if type(block).__name__ in BLOCK_NAMES:
            fully_shard(block, mesh=mesh, **policy)
    fully_shard(module, mesh=mesh, **policy)


def wrap(model: nn.Module, ema: nn.Module, device: torch.device, fsdp: bool) -> nn.Module:
    """The module a training micro-step calls.

    ``fsdp``: ``model`` and its EMA copy ``ema``, still on the CPU, are sharded in place with
    the same layout (the EMA update stays shard-local) and take rank 0's weights (broadcast one
    tensor at a time: differing initialisations cannot mix); ``model`` is returned. Otherwise
    DDP around ``model`` (already on ``device``) with several ranks (DDP broadcasts rank 0's
    weights itself), else ``model`` itself.
    """
    if fsdp:
        full = [(m, m.state_dict()) for m in (model, ema)]  # CPU tensors, freed on return
        mesh = make_mesh(device)
        # bf16 all-gathers and compute, fp32 gradient reduction; the loop's autocast decides
        # each op's precision as without FSDP (so inputs are not cast here)
        mp = MixedPrecisionPolicy(torch.bfloat16, torch.float32, cast_forward_inputs=False)
        shard(model, mesh, mp if device.type == "cuda" else None)
        shard(ema, mesh)
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        for module, state in full:
            set_model_state_dict(module, state, options=options)
        return model
    if tdist.is_initialized() and tdist.get_world_size() > 1:
        return DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )
    return model


def set_grad_checkpointing(model: nn.Module) -> None:
    """Recompute every transformer block in backward instead of storing its activations
    (``set_grad_checkpointing`` of each trunk in ``model``): less memory for ~1/3 more compute."""
    trunks = [m for m in model.modules() if hasattr(m, "set_grad_checkpointing")]
    if not trunks:
        raise ValueError(f"grad_checkpointing: {type(model).__name__} has no checkpointable trunk")
    for trunk in trunks:
        trunk.set_grad_checkpointing(True)


@contextmanager
def no_grad_sync(wrapped: nn.Module) -> Iterator[None]:
    """Accumulate gradients locally, without the cross-rank reduction, inside the block.

    DDP: ``no_sync()``. FSDP2: ``set_requires_gradient_sync(False)`` skips the reduce-scatter
    (unsharded gradients accumulate until the next synced backward reduces them: full-size
    gradient memory during accumulation, as FSDP1's ``no_sync``). Otherwise: nothing to skip.
    """
    if isinstance(wrapped, DistributedDataParallel):
        with wrapped.no_sync():
            yield
    elif isinstance(wrapped, FSDPModule):
        wrapped.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            wrapped.set_requires_gradient_sync(True)
    else:
        yield


def to_local_scalar(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor for a possibly replicated ``DTensor`` (``clip_grad_norm_``'s result)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


# ----------------------------------------------------------------------------------------------
# Full (unsharded) state for checkpoints


def meta_twin(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose tensors live on the meta device (no memory, no data copied):
    it takes gathered weights later through ``load_state_dict(..., assign=True)``. Make it
    before sharding (sharded modules cannot be deep-copied)."""
    memo = {}
    for t in chain(module.parameters(), module.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(module, memo)


def gather_module(module: nn.Module, twin: nn.Module) -> nn.Module:
    """Collective (every rank calls it): rank 0's ``twin`` gets ``module``'s full weights as
    CPU tensors and is returned; other ranks get ``twin`` untouched (still on meta)."""
    main = tdist.get_rank() == 0
    state = {}
    for name, t in module.state_dict().items():
        full = t.full_tensor() if isinstance(t, DTensor) else t  # all-gather, one at a time
        if main:
            state[name] = full.detach().cpu()
    if main:
        twin.load_state_dict(state, assign=True)
    return twin


def gather_optimizer_state(root: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Collective: the full optimizer state on rank 0 (CPU tensors, ``{}`` elsewhere), keyed by
    parameter index as ``Optimizer.state_dict()`` of the unsharded run (so either resumes it).

    :param root: a module holding every parameter of ``optimizer`` (not sharded: the state as
        it is).
    """
    if not isinstance(root, FSDPModule):
        return optimizer.state_dict()
    state = get_optimizer_state_dict(root, optimizer, options=_FULL)
    if not state:
        return {}
    # DCP keys the state by parameter name in param_groups order; a name's position in that
    # order is its key in Optimizer.state_dict(), whose param_groups (hyperparameters, indices)
    # are the same on every rank and are taken as they are (DCP would turn tuples into lists).
    names = [n for g in state["param_groups"] for n in g["params"]]
    index = {n: i for i, n in enumerate(names)}
    return {
        "state": {index[n]: s for n, s in state["state"].items()},
        "param_groups": optimizer.state_dict()["param_groups"],
    }


def load_optimizer_state(root: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a full ``Optimizer.state_dict()``-shaped state into an optimizer over ``root``'s
    parameters: sharded ones (every rank holds ``state``; each keeps its shard) or plain ones."""
    if not isinstance(root, FSDPModule):
        optimizer.load_state_dict(state)
        return
    names = {p: n for n, p in root.named_parameters()}
    ordered = [names[p] for g in optimizer.param_groups for p in g["params"]]
    by_name = {
        "state": {ordered[i]: s for i, s in state["state"].items()},
        "param_groups": [
            {**g, "params": [ordered[i] for i in g["params"]]} for g in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(
        root, optimizer, by_name, options=StateDictOptions(full_state_dict=True)
    )
    # hyperparameters as saved (DCP's flattening turns tuples such as ``betas`` into lists)
    for group, saved in zip(optimizer.param_groups, state["param_groups"], strict=True):
        group.update({k: v for k, v in saved.items() if k != "params"})
