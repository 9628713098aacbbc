"""Spreading independent work over the processes ``accelerate launch`` starts.

Outside a multi-process launch (no ``WORLD_SIZE`` > 1 in the environment) everything runs in
one process and ``accelerate`` is not imported.  Note that ``accelerate launch --cpu
--num_processes N`` starts ONE process unless MPI is installed; on CPUs launch with
``accelerate launch --multi_gpu --num_processes N`` (which uses torchrun; without GPUs the
processes use gloo on the CPU) or ``torchrun --nproc_per_node N``.

Inside a launch, :func:`process_group` returns this process's rank and the world size from
``accelerate.PartialState`` (gloo on CPUs, NCCL on GPUs, across nodes as ``accelerate launch``
configured them), and :func:`gather` collects Python objects from every process onto every
process.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from .errors import LocopackError


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place among the launched processes."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes shared outputs."""
        return self.rank == 0

    def share(self, items: list) -> list:
        """This process's share of ``items`` (round robin, so shares differ by at most one)."""
        return items[self.rank :: self.size]


def process_group() -> ProcessGroup:
    """The current process group (a group of one unless launched with several processes)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return ProcessGroup()
    try:
        from accelerate import PartialState
    except ImportError:
        raise LocopackError(
            "this process was launched as one of several (WORLD_SIZE > 1) but accelerate is "
            "not installed: pip install 'locopack[dist]'"
        ) from None
    import torch

    # CPU processes (gloo) when asked for, or when there is no GPU to give each process
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    state = PartialState(cpu=cpu or not torch.cuda.is_available())
    if state.num_processes != int(os.environ["WORLD_SIZE"]):
        raise LocopackError(
            f"launched as {os.environ['WORLD_SIZE']} processes but accelerate set up "
            f"{state.num_processes}; launch with `accelerate launch --multi_gpu` or `torchrun`"
        )
    return ProcessGroup(state.process_index, state.num_processes)


def launch_command(processes: int) -> list[str]:
    """The argv prefix that starts ``processes`` copies of a ``-m`` module on this machine
    through ``accelerate launch`` (torchrun underneath; gloo on the CPU without GPUs)."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]


def gather(group: ProcessGroup, value: object) -> list[object]:
    """``[value of rank 0, value of rank 1, ...]`` on every process."""
    if group.size == 1:
        return [value]
    from accelerate.utils import gather_object

    return gather_object([value])


def barrier(group: ProcessGroup) -> None:
    """Wait until every process of the group gets here."""
    if group.size > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()
