"""The torch device a piece of work runs on, decided in the process that runs it.

Inside a Ray task, actor, Tune trial or Serve replica the answer is what Ray granted that
process: Ray points CUDA_VISIBLE_DEVICES at the GPUs it reserved for it, so the granted
GPU is cuda:0 there, and a process granted none runs on the CPU (a GPU on its node
belongs to whichever task Ray gave it to). Outside Ray (`emogen generate` on a laptop)
"auto" is CUDA when this process sees it, else the CPU. Asking for "cuda" where no GPU is
usable is an error naming why, never a quiet CPU run; "cpu" always works.

    device = choose_device("auto")                      # where the work runs
    decide_device("cuda", Placement(in_ray_worker=True, granted_gpus=("0",), cuda_available=True))
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch

from emogen.errors import UserError

DEVICE_REQUESTS = ("auto", "cpu", "cuda")
DEVICE_HELP = ("where the models run: auto (the GPU Ray granted this task, or outside Ray CUDA when present, "
               "else the CPU), cpu, or cuda (an error when no GPU is usable)")


class DeviceUnavailable(UserError):
    """The device asked for (or the GPU Ray reserved) cannot be used in this process."""


@dataclass(frozen=True)
class Placement:
    """What a process knows about where it runs: whether it is a Ray worker (task, actor,
    replica), the GPU ids Ray granted it, whether torch sees CUDA, and CUDA_VISIBLE_DEVICES."""

    in_ray_worker: bool
    granted_gpus: tuple[str, ...] = ()
    cuda_available: bool = False
    visible_devices: str | None = None


def current_placement() -> Placement:
    """This process's Placement. Ray is asked only when this process already imported it:
    a Ray worker always has, and a plain command need not pay for importing Ray."""
    ray = sys.modules.get("ray")
    in_worker = bool(ray is not None and ray.is_initialized()
                     and ray.get_runtime_context().worker.mode == ray.WORKER_MODE)
    granted = tuple(str(gpu) for gpu in ray.get_gpu_ids()) if in_worker else ()
    return Placement(in_ray_worker=in_worker, granted_gpus=granted, cuda_available=torch.cuda.is_available(),
                     visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))


def _granted_index(gpu: str, visible: str | None) -> int:
    """The torch index of a granted GPU id: its position in CUDA_VISIBLE_DEVICES (Ray sets
    that to the granted ids, so normally 0), or the id itself when the variable is unset
    (RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES leaves every GPU of the node visible)."""
    if visible is not None:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        return ids.index(gpu) if gpu in ids else 0
    return int(gpu) if gpu.isdigit() else 0


def decide_device(requested: str, placement: Placement) -> torch.device:
    """The device for `requested` ("auto" | "cpu" | "cuda") given `placement`; DeviceUnavailable
    when it asks for a GPU this process cannot use."""
    if requested not in DEVICE_REQUESTS:
        raise DeviceUnavailable(f"unknown device {requested!r}: choose one of {', '.join(DEVICE_REQUESTS)}")
    if requested == "cpu":
        return torch.device("cpu")
    if placement.in_ray_worker:
        if not placement.granted_gpus:
            if requested == "auto":
                return torch.device("cpu")
            raise DeviceUnavailable("device cuda asked for, but Ray granted this task no GPU: "
                                    "reserve one (--use-gpu, num_gpus) or use the CPU")
        if not placement.cuda_available:
            # a reserved GPU left idle is the failure this module exists to prevent, so
            # even "auto" says so rather than running on the CPU
            raise DeviceUnavailable(f"Ray granted this task GPU {', '.join(placement.granted_gpus)}, but torch "
                                    f"{torch.__version__} sees no CUDA in it (a CPU-only torch build or no driver "
                                    "on that node)")
        return torch.device("cuda", _granted_index(placement.granted_gpus[0], placement.visible_devices))
    if placement.cuda_available:
        return torch.device("cuda", 0)
    if requested == "auto":
        return torch.device("cpu")
    raise DeviceUnavailable(f"device cuda asked for, but torch {torch.__version__} sees no CUDA here "
                            "(a CPU-only torch build, no GPU or no driver): use --device cpu or auto")


def choose_device(requested: str = "auto") -> torch.device:
    """`decide_device` for this process, where the work runs."""
    return decide_device(requested, current_placement())
