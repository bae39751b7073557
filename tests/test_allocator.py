"""The CPU runtime has glibc keep freed memory for the next step, and never overrides the user's own settings."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import types

import pytest

from pixelwise.engine import runtime
from pixelwise.errors import ConfigError

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# A training step's pattern in small: 20 blocks of 8 MiB (activations) allocated, then all freed, ten times over.
# Page faults per round say whether the memory was kept or handed back and faulted in again.
ROUNDS = """
import json, resource, sys, torch
from pixelwise.engine.runtime import resolve_runtime, keep_freed_memory
resolve_runtime("cpu", "off", False)
def step():
    blocks = [torch.ones(2 << 20) for _ in range(20)]
    del blocks
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
print(json.dumps({"state": keep_freed_memory(), "faults": faults}))
"""
PAGES_PER_ROUND = 20 * (8 << 20) // 4096


def _rounds(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in (
        "PIXELWISE_ALLOCATOR", "GLIBC_TUNABLES", "LD_PRELOAD")}
    out = subprocess.run([sys.executable, "-c", ROUNDS], env={**clean, **env}, capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only (Linux with glibc)")
def test_a_cpu_runtime_keeps_freed_activations_instead_of_faulting_them_in_every_step():
    kept = _rounds()
    default = _rounds(PIXELWISE_ALLOCATOR="system")
    assert kept["state"] == "glibc keeping freed memory"
    assert default["state"] == "glibc defaults (PIXELWISE_ALLOCATOR=system)"
    # kept, a round faults in under a tenth of its 40960 pages (measured 2-5%); glibc's defaults hand much of the
    # 160 MiB back each round and fault it in again (measured 20-100% of the pages)
    assert kept["faults"] < 0.1 * PAGES_PER_ROUND, kept
    assert default["faults"] > kept["faults"], (default, kept)


@pytest.mark.parametrize("env, state", [
    ({"MALLOC_TRIM_THRESHOLD_": "131072"}, "glibc as set in the environment"),
    ({"MALLOC_MMAP_MAX_": "0"}, "glibc as set in the environment"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}, "glibc as set in the environment"),
    ({"PIXELWISE_ALLOCATOR": "System"}, "glibc defaults (PIXELWISE_ALLOCATOR=system)"),
])
def test_the_users_own_malloc_settings_are_left_alone(monkeypatch, env, state):
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    def refuse(*_args):
        raise AssertionError("mallopt must not be called over the user's settings")

    monkeypatch.setattr(runtime.ctypes, "CDLL", refuse)
    assert runtime._set_allocator() == state


def test_other_platforms_keep_their_allocator(monkeypatch):
    for key in ("PIXELWISE_ALLOCATOR", "GLIBC_TUNABLES", *runtime.USER_MALLOC_SETTINGS):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda: ("", ""))  # musl, macOS, Windows
    monkeypatch.setattr(runtime.ctypes, "CDLL", lambda *_: pytest.fail("mallopt called off glibc"))
    assert runtime._set_allocator() == "the platform's allocator"


def test_it_is_set_once_per_process_and_only_for_the_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(runtime, "_allocator_state", [])
    monkeypatch.setattr(runtime, "_set_allocator", lambda: calls.append(1) or "set")
    runtime.resolve_runtime("cpu", "off", False)
    runtime.resolve_runtime("cpu", "off", True)
    assert calls == [1]
    assert runtime.keep_freed_memory() == "set"


@pytest.mark.parametrize("answers, state", [
    ((1, 1), "glibc keeping freed memory"),
    ((0, 0), "glibc defaults"),
    ((1, 0), "glibc partly set (mallopt refused a value)"),
])
def test_what_mallopt_accepted_is_what_is_reported(monkeypatch, answers, state):
    for key in ("PIXELWISE_ALLOCATOR", "GLIBC_TUNABLES", *runtime.USER_MALLOC_SETTINGS):
        monkeypatch.delenv(key, raising=False)
    calls = []

    def mallopt(param, value):
        calls.append((param, value))
        return answers[len(calls) - 1]

    monkeypatch.setattr(runtime.sys, "platform", "linux")
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(runtime.ctypes, "CDLL", lambda _name: types.SimpleNamespace(mallopt=mallopt))
    assert runtime._set_allocator() == state
    assert calls == list(runtime.ALLOCATOR.items())  # both values asked for, whatever the first answer


@pytest.mark.parametrize("value", ["jemalloc", "[system]", "../system", "/usr/lib/libtcmalloc.so", "1e999"])
def test_an_unknown_allocator_choice_is_refused_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("PIXELWISE_ALLOCATOR", value)
    monkeypatch.setattr(runtime.ctypes, "CDLL", lambda *_: pytest.fail("mallopt called on a refused choice"))
    with pytest.raises(ConfigError, match=r"PIXELWISE_ALLOCATOR=.*use 'system'"):
        runtime._set_allocator()
