"""What this machine's CPU offers the CPU runtimes: how many cores, and which paths are safe.

Read from /proc/cpuinfo (x86-64 and arm64 alike), the process's CPU affinity and its cgroup
CPU quota, never assumed: the machines conveyor runs on range from 2-vCPU VMs with one thread
per core to hyper-threaded hosts, AMD and Intel, with and without AMX.
"""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path

# Intel's Advanced Matrix Extensions. llama.cpp repacks weights into an AMX buffer type on
# these CPUs (one of its "extra buffer types"), and that path crashes with SIGSEGV in the
# first matrix multiply on Sapphire Rapids class machines (a known, unfixed llama.cpp bug).
AMX_FLAGS = frozenset({"amx_tile", "amx_int8", "amx_bf16", "amx_fp16", "amx_complex"})
EXTRA_BUFFER_CHOICES = ("auto", "on", "off")


@dataclass(frozen=True)
class CpuInfo:
    """The facts about a CPU that decide threads and llama.cpp's weight layout."""

    arch: str
    model_name: str
    flags: frozenset[str]
    logical: int  # processors this process may run on
    physical_cores: int  # distinct cores among them (hyper-thread siblings counted once)

    @property
    def has_amx(self) -> bool:
        return bool(self.flags & AMX_FLAGS)

    def describe(self) -> dict[str, object]:
        """Return what the worker reports about its CPU."""
        return {
            "arch": self.arch,
            "model": self.model_name,
            "logical": self.logical,
            "physical_cores": self.physical_cores,
            "amx": self.has_amx,
        }


def parse_cpuinfo(
    text: str, arch: str, allowed: set[int] | None = None, quota: float | None = None
) -> CpuInfo:
    """Read a /proc/cpuinfo text: flags, and cores among the `allowed` processors.

    Cores are distinct (physical id, core id) pairs; where the kernel gives no core ids
    (arm64, some VMs) each processor counts as a core. A cgroup `quota` (in CPUs) caps both.
    """
    processors: list[dict[str, str]] = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip().lower()] = value.strip()
        if "processor" in fields and fields["processor"].isdigit():
            processors.append(fields)
    if allowed is not None:
        processors = [p for p in processors if int(p["processor"]) in allowed] or processors
    first = processors[0] if processors else {}
    flags = frozenset((first.get("flags") or first.get("features") or "").split())
    name = (
        first.get("model name")
        or first.get("cpu model")
        or first.get("hardware")
        or first.get("cpu part")
        or arch
    )
    logical = max(1, len(processors))
    if all("core id" in p for p in processors) and processors:
        cores = len({(p.get("physical id", "0"), p["core id"]) for p in processors})
    else:
        cores = logical
    if quota is not None:
        cap = max(1, math.ceil(quota))
        logical, cores = min(logical, cap), min(cores, cap)
    return CpuInfo(
        arch=arch, model_name=name, flags=flags, logical=logical, physical_cores=max(1, cores)
    )


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """Return the CPUs a cgroup v2 or v1 quota allows this process, or None without one."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def read_cpu() -> CpuInfo:
    """Return this machine's CpuInfo, as this process sees it."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags to read, count what the OS reports
        text = "".join(f"processor\t: {i}\n\n" for i in range(os.cpu_count() or 1))
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:
        allowed = None
    return parse_cpuinfo(text, platform.machine(), allowed, cgroup_cpu_quota())


def default_threads(cpu: CpuInfo) -> int:
    """Return the thread count for CPU inference: one per physical core, as llama.cpp's server.

    A second hyper-thread on a core only competes for the same SIMD units, and llama-cpp-
    python's own default (cpu_count // 2) halves the cores on VMs with one thread per core.
    """
    return cpu.physical_cores


def extra_buffers_enabled(choice: str, cpu: CpuInfo) -> bool:
    """Decide whether llama.cpp may repack weights into its extra buffer types.

    `on` and `off` are the operator's word; `auto` keeps them (faster repacked layouts on
    AVX2/AVX-512/NEON machines) except on CPUs with AMX, where llama.cpp crashes in them.

    :raises ValueError: for a choice other than auto, on or off.
    """
    if choice not in EXTRA_BUFFER_CHOICES:
        raise ValueError(f"extra_buffers must be one of {EXTRA_BUFFER_CHOICES}, not {choice!r}")
    if choice == "auto":
        return not cpu.has_amx
    return choice == "on"
