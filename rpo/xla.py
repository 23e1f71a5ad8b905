"""What torch_xla's lazy tensors need, in one place; every function is a no-op (or the plain path) elsewhere.

On an XLA device (a TPU, or the CPU with PJRT_DEVICE=CPU) operations are recorded, not run: a graph is
compiled and run when the step is marked or a value is read to the host, and compiled again for every
new graph, so a loop must cut its graph at the same place every time, keep its shapes fixed and read
values to the host rarely. The stages call these hooks; only this module (and `rpo.device`, which
picks the device) imports torch_xla.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

EXTRA = "uv sync --extra tpu"
# loss rows are read to the host every this many steps on XLA (every step elsewhere); the numbers are the same
LOG_EVERY = 10


def is_xla(device) -> bool:
    return torch.device(device).type == "xla"


# XLA on a CPU (PJRT_DEVICE=CPU) is for building and testing the TPU path: there LLVM's optimisations made
# compiling the tiny models' graphs 6x slower (106 s against 18 s) for runs 2x faster, a bad trade for runs of
# seconds. Set before the first graph compiles; an XLA_FLAGS that sets the level itself wins.
CPU_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def device() -> torch.device:
    """torch_xla's device. On TPUs compiled graphs are kept on disk (torch_xla's persistent cache): each stage
    is a process of its own, and the same shapes (model, batch, resolution) then compile once per machine,
    not once per stage and subject. XLA on a CPU compiles again anyway (measured), so it keeps none."""
    import torch_xla

    flags, on_cpu = os.environ.get("XLA_FLAGS", ""), os.environ.get("PJRT_DEVICE") == "CPU"
    if on_cpu and "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {CPU_FLAGS}".strip()
    if not on_cpu and "XLA_PERSISTENT_CACHE_PATH" not in os.environ:  # read at the first compilation
        cache = Path(os.environ.get("RPO_CACHE", Path.home() / ".cache" / "rpo"))  # beside the tiny models
        where = cache / "xla" / f"{torch_xla.__version__}-{os.environ.get('PJRT_DEVICE', 'TPU')}"
        os.environ["XLA_PERSISTENT_CACHE_PATH"] = str(where)
    return torch_xla.device()


def is_tpu() -> bool:
    import torch_xla.runtime as xr

    return xr.device_type() == "TPU"


def mark_step(device) -> None:
    """End of a training step: compile (once) and run the graph recorded since the last mark."""
    if is_xla(device):
        import torch_xla

        torch_xla.sync()


def to_host(tensors: dict, device) -> dict:
    """Tensors of `device` on the CPU, all in one transfer on XLA (a state dict read one tensor at a time
    would wait for the device once per tensor)."""
    if not is_xla(device):
        return {k: v.detach().cpu() for k, v in tensors.items()}
    import torch_xla
    import torch_xla.core.xla_model as xm

    torch_xla.sync()  # pending updates (the last optimizer step) become device data first
    keys = list(tensors)
    values = xm._maybe_convert_to_cpu([tensors[k].detach() for k in keys])
    return dict(zip(keys, values))


def batches(items: list, size: int, device) -> Iterator[tuple[list, int]]:
    """(chunk, n): `items` `size` at a time, n of the chunk real. On XLA every chunk of one call has the same
    length (the work split evenly, the last chunk padded with copies of its last item), so a model compiles
    one graph per call size instead of one more for a short last chunk; callers keep the first n results."""
    if not items:
        return
    if not is_xla(device):
        for i in range(0, len(items), size):
            chunk = items[i : i + size]
            yield chunk, len(chunk)
        return
    n_chunks = -(-len(items) // size)
    even = -(-len(items) // n_chunks)
    for i in range(0, len(items), even):
        chunk = items[i : i + even]
        yield chunk + [chunk[-1]] * (even - len(chunk)), len(chunk)


class StepLog:
    """The training loop's per-step values, handed to `on_log` as rows of Python floats.

    Elsewhere each step's row is read at once. On XLA the values stay on the device and are read every
    `every` steps (and at `flush`), so a step never waits for the device; the rows are the same numbers.
    """

    def __init__(self, device, on_log: Callable[[dict], None], every: int = LOG_EVERY):
        self.on_log, self.every = on_log, every if is_xla(device) else 1
        self.device, self._pending = device, []

    def add(self, step: int, values: dict) -> None:
        self._pending.append((step, {k: v.detach() if torch.is_tensor(v) else v for k, v in values.items()}))
        if len(self._pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        flat = {(i, k): v for i, (_, values) in enumerate(pending) for k, v in values.items() if torch.is_tensor(v)}
        host = to_host(flat, self.device) if is_xla(self.device) else flat
        for i, (step, values) in enumerate(pending):
            row = {"step": step, **{k: float(host[(i, k)]) if (i, k) in host else float(v) for k, v in values.items()}}
            self.on_log(row)


def counts() -> dict:
    """torch_xla's running totals in this process: graphs compiled, seconds spent compiling, graphs run,
    and the ops that fell back to the CPU (none is the aim); {} before torch_xla is imported."""
    import sys

    if "torch_xla" not in sys.modules:
        return {}
    import torch_xla.debug.metrics as met

    compiled = met.metric_data("CompileTime") or (0, 0.0, [])
    ran = met.metric_data("ExecuteTime") or (0, 0.0, [])
    return {"xla_compilations": compiled[0], "xla_compile_seconds": round(compiled[1] / 1e9, 1),
            "xla_executions": ran[0], "xla_fallback_ops": sorted(met.executed_fallback_ops())}


def since(before: dict) -> dict:
    """`counts()` of the work done since `before` was taken (fallback ops: all of the process's)."""
    now = counts()
    return {k: v if isinstance(v, list) else round(v - before.get(k, 0), 1) for k, v in now.items()}
