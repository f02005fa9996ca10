"""tokenloom.runtime.machine: what the speed choices know about the machine."""

from __future__ import annotations

from tokenloom.runtime import machine

X86 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 amx_tile amx_bf16

processor\t: 1
model name\t: something else
flags\t\t: fpu
"""
ARM = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes
CPU implementer\t: 0x41
"""


def test_parse_cpuinfo():
    assert machine.parse_cpuinfo(X86) == ("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
                                          ["fpu", "sse2", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"])
    assert machine.parse_cpuinfo(ARM) == ("", ["fp", "asimd", "evtstrm", "aes"])
    assert machine.parse_cpuinfo("") == ("", [])


def test_machine_info_and_fingerprint():
    import torch

    info = machine.machine_info()
    assert info["cpu"] and set(info["flags"]) <= set(machine.ISA_FLAGS) and info["cores"] >= 1
    assert info["torch"] == torch.__version__ and info["torch"] in info["torch_build"]
    assert info["threads"] == torch.get_num_threads()
    fp = machine.machine_fingerprint(info)
    assert f"cpu={info['cpu']}" in fp and machine.machine_fingerprint({**info, "threads": 99}) != fp
    assert machine.machine_fingerprint({**info, "flags": ["avx512f"]}) != fp
    # the tiles kernels: AMX or not changes what a bfloat16 step costs, so it is in the key
    assert set(info["tiles"]) == {"float32", "bfloat16"}
    assert info["tiles"]["float32"] in ("avx512f", "avx2+fma", "scalar")
    assert info["tiles"]["bfloat16"] in ("amx-bf16", info["tiles"]["float32"])
    assert machine.machine_fingerprint({**info, "tiles": {**info["tiles"], "bfloat16": "other"}}) != fp


def test_tiles_amx_can_be_turned_off(monkeypatch):
    from tokenloom.runtime.cpupack import tiles_amx

    monkeypatch.setenv("TOKENLOOM_TILES_AMX", "0")
    assert tiles_amx() is False and machine.tiles_kernels()["bfloat16"] == machine.tiles_kernels()["float32"]
    monkeypatch.delenv("TOKENLOOM_TILES_AMX")
    from tokenloom import _core

    assert tiles_amx() == _core.amx_available()


def test_machine_load(monkeypatch):
    import os

    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 1.0, 1.0))
    assert machine.machine_load()["busy"]
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert not machine.machine_load()["busy"]


def test_own_load_counts_this_process():
    import time

    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
    assert machine.own_load() > 0.0


def test_describe_names_cpu_flags_and_torch():
    info = {"cpu": "Some CPU", "flags": ["avx2", "fma"], "cores": 2, "torch_build": "2.15 mkldnn=on", "threads": 2}
    assert machine.describe(info) == "Some CPU (avx2 fma), 2 cores, torch 2.15 mkldnn=on, 2 threads"
    assert "no ISA flag of interest" in machine.describe({**info, "flags": []})


def test_resident_mb_grows_with_an_allocation():
    import math
    import sys

    from tokenloom.runtime.machine import resident_mb

    before = resident_mb()
    if not sys.platform.startswith("linux"):
        assert math.isnan(before)
        return
    import mmap

    # an anonymous map always gets fresh pages (a bytearray may reuse memory the process freed
    # earlier and still holds, so its RSS need not grow); touch every page of 64 MiB
    block = mmap.mmap(-1, 64 << 20)
    try:
        for off in range(0, len(block), mmap.PAGESIZE):
            block[off] = 1
        assert before > 0 and resident_mb() - before > 40
    finally:
        block.close()
