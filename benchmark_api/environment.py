"""Where a benchmark ran: device, dtype, versions, cores, memory and measured bandwidth.

Every result carries one, so that figures from different machines are never compared blind.
"""

from __future__ import annotations

import os
import platform
import sys

import psutil
import torch

from benchmark_api.results import Environment
from benchmark_api.roofline import MachineLimits
from core.engine.model import BDHConfig


def device_name(device: torch.device) -> str | None:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    if device.type == "cpu":
        return _cpu_model() or platform.processor() or platform.machine() or None
    return device.type


def _cpu_model() -> str | None:
    """The CPU's marketing name on Linux (platform.processor() often says only x86_64)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip() or None
    except OSError:
        return None
    return None


def describe(
    *,
    device: torch.device,
    dtypes: list[str],
    model: str,
    config: BDHConfig | None = None,
    limits: MachineLimits | None = None,
    untrained: bool = False,
) -> Environment:
    memory = psutil.virtual_memory().total
    if device.type == "cuda":
        memory = torch.cuda.get_device_properties(device).total_memory
    return Environment(
        device=str(device),
        device_name=device_name(device),
        dtype=dtypes[0],
        dtypes=list(dtypes),
        torch_version=torch.__version__,
        python_version=platform.python_version(),
        platform=f"{sys.platform} {platform.machine()}",
        cores=os.cpu_count() or 1,
        physical_cores=psutil.cpu_count(logical=False),
        torch_threads=torch.get_num_threads(),
        memory_total_gb=round(memory / 1e9, 2),
        bandwidth_gb_s=None if limits is None else limits.dram_copy_bytes_s / 1e9,
        read_bandwidth_gb_s=None if limits is None else limits.dram_read_bytes_s / 1e9,
        update_bandwidth_gb_s=None if limits is None else limits.dram_update_bytes_s / 1e9,
        matmul_peak_gflop_s=None if limits is None else limits.matmul_flop_s / 1e9,
        cache_mb=None if limits is None else limits.cache_bytes / 2**20,
        model=model,
        untrained=untrained,
        parameters=config.parameter_count() if config else None,
        state_mb_per_sequence=config.state_numel() * 4 / 2**20 if config else None,
    )
