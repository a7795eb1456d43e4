"""The CPU decisions of the llama.cpp worker, over real /proc/cpuinfo texts."""

from __future__ import annotations

import pytest

from workers.cpu import cgroup_cpu_quota, default_threads, extra_buffers_enabled, parse_cpuinfo

AMD_FLAGS = (
    "fpu sse sse2 ssse3 fma avx avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni"
)
INTEL_AMX_FLAGS = (
    "fpu sse sse2 ssse3 fma avx avx2 avx512f avx512bw avx512vl avx512_vnni "
    "avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8"
)


def x86(name: str, flags: str, layout: list[tuple[int, int]]) -> str:
    """Return a cpuinfo text with one block per (physical id, core id)."""
    return (
        "\n\n".join(
            f"processor\t: {i}\nvendor_id\t: x\nmodel name\t: {name}\nphysical id\t: {pkg}\n"
            f"core id\t\t: {core}\nflags\t\t: {flags}"
            for i, (pkg, core) in enumerate(layout)
        )
        + "\n\n"
    )


def arm(n: int) -> str:
    return "".join(
        f"processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes crc32 atomics "
        f"asimddp sve\nCPU implementer\t: 0x41\nCPU part\t: 0xd40\n\n"
        for i in range(n)
    )


def test_amd_vm_with_one_thread_per_core_uses_every_core():
    cpu = parse_cpuinfo(x86("AMD EPYC", AMD_FLAGS, [(0, 0), (0, 1)]), "x86_64")
    assert (cpu.logical, cpu.physical_cores, cpu.has_amx) == (2, 2, False)
    assert default_threads(cpu) == 2  # llama-cpp-python's own default would be 1
    assert extra_buffers_enabled("auto", cpu) is True


def test_intel_amx_turns_extra_buffers_off_under_auto_only():
    cpu = parse_cpuinfo(
        x86("Intel(R) Xeon(R) Platinum 8481C", INTEL_AMX_FLAGS, [(0, 0), (0, 1)]), "x86_64"
    )
    assert cpu.has_amx and cpu.model_name.startswith("Intel")
    assert extra_buffers_enabled("auto", cpu) is False
    assert extra_buffers_enabled("on", cpu) is True
    assert extra_buffers_enabled("off", cpu) is False


def test_hyperthread_siblings_count_once():
    # Two packages of two cores, each core with two hardware threads.
    layout = [(0, 0), (0, 1), (1, 0), (1, 1)] * 2
    cpu = parse_cpuinfo(x86("Intel Xeon", INTEL_AMX_FLAGS, layout), "x86_64")
    assert (cpu.logical, cpu.physical_cores) == (8, 4)


def test_affinity_and_cgroup_quota_cap_the_cores():
    layout = [(0, c) for c in range(8)]
    text = x86("AMD EPYC", AMD_FLAGS, layout)
    assert parse_cpuinfo(text, "x86_64", allowed={0, 1, 2}).physical_cores == 3
    assert parse_cpuinfo(text, "x86_64", quota=1.5).physical_cores == 2


def test_arm64_has_no_core_ids_and_no_amx():
    cpu = parse_cpuinfo(arm(4), "aarch64")
    assert (cpu.logical, cpu.physical_cores, cpu.has_amx) == (4, 4, False)
    assert "asimd" in cpu.flags
    assert extra_buffers_enabled("auto", cpu) is True


def test_unknown_choice_is_refused():
    cpu = parse_cpuinfo(arm(1), "aarch64")
    with pytest.raises(ValueError, match="extra_buffers"):
        extra_buffers_enabled("maybe", cpu)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_quota(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_quota(tmp_path) == expected
