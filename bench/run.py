"""Benchmark: one subject through every stage, ours against the naive procedure of the official code.

Prints, per stage and for each procedure: wall time, images or steps per second, peak memory;
then naive / ours per stage and overall. Both run in this process on the same models, stage by
stage (after one warm-up, ours first), at the paper's counts or a stated fraction of them.

    python -m bench.run --threads 1 --naive-fraction 0.25          # CPU, tiny models
    python -m bench.run --device cuda --arch sd21 --naive-fraction 0.1   # SD 2.1's architecture, 512 px
    python -m bench.run --arch sd21 --divisor 8 --resolution 64 --fraction 0.1   # the GPU path, shrunk for a CPU
    python -m bench.run --device cuda --arch sdxl --fraction 0.1   # SDXL base 1.0's architecture, 1024 px, LoRA
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
N_TRAIN_PROMPTS, N_EVAL_PROMPTS = 8, 25
UNIT = {"prior": "img", "score": "img", "labels": "pair", "finetune": "step", "select": "run", "evaluate": "img"}
PRESET = {"tiny": "tiny", "sd21": "paper", "sdxl": "paper-sdxl"}  # the settings each architecture runs with
EVERY = {"tiny": 40, "sd21": 40, "sdxl": 100}  # validation interval: ten validations at full counts
ARCH = {"tiny": "tiny models", "sd21": "SD 2.1 architecture", "sdxl": "SDXL base 1.0 architecture"}


def describe_counts(cfg) -> str:
    """The counts every stage's seconds are extrapolated to: the paper's, or what `--set` made of them."""
    return (f"{N_TRAIN_PROMPTS} prompts x {cfg.prior.images_per_prompt} prior images, {cfg.train.max_steps} steps, "
            f"validation every {cfg.validate.every} steps with {N_TRAIN_PROMPTS} x {cfg.validate.images_per_prompt} "
            f"images, {N_EVAL_PROMPTS} x {cfg.evaluate.images_per_prompt} evaluation images, "
            f"{cfg.prior.num_inference_steps} sampling steps")


def counts(fraction: float, every: int = 40) -> dict:
    """The paper's counts scaled by `fraction`: image counts and validations shrink, per-call shapes stay."""
    per_prompt, validations = max(1, round(4 * fraction)), max(1, round(10 * fraction))
    return {
        "prior.images_per_prompt": per_prompt, "prior.num_inference_steps": 50,
        "train.max_steps": every * validations, "validate.every": every,
        "validate.at_start": False,  # the official code validates only after training steps
        "validate.images_per_prompt": 4, "validate.num_inference_steps": 50,
        "evaluate.images_per_prompt": per_prompt, "evaluate.num_inference_steps": 50,
        "evaluate.base_images": False,  # the official code draws no base images
    }


def units(stage: str, cfg, n_refs: int) -> int:
    """Work done by a stage at this config, in UNIT[stage]: what the linear extrapolation scales."""
    prior = N_TRAIN_PROMPTS * cfg.prior.images_per_prompt
    return {"prior": prior, "score": n_refs + prior, "labels": prior, "finetune": cfg.train.max_steps,
            "select": 1, "evaluate": N_EVAL_PROMPTS * cfg.evaluate.images_per_prompt}[stage]


def bench_config(args, models: dict, fraction: float):
    from rpo import params as P
    from rpo import presets

    overrides = {**presets.load(PRESET[args.arch]), **counts(fraction, EVERY[args.arch]),
                 "subjects": [args.subject], "device": args.device, "model.resolution": args.resolution}
    if args.arch != "tiny":  # the built pipeline's own VAE: the fp16-fix VAE of paper-sdxl has the same architecture
        overrides.update({"model.base": models["base"], "model.vae": "base", "reward.backend": "transformers",
                          "reward.model": models["clip"],
                          "evaluate.dino": models["dino"], "evaluate.clip": models["clip"],
                          "evaluate.clip_backend": "transformers"})
    overrides.update(P.parse_override(o) for o in args.set or [])
    return P.load_config(REPO / "params.yaml", overrides)


def workspace(root: Path, subject: str, cfg):
    """A project folder holding only the subject: every stage writes under it."""
    from rpo.context import context

    shutil.copytree(REPO / "data" / "subjects" / subject, root / "data" / "subjects" / subject)
    (root / ".dvc").mkdir()  # a project: temporaries of atomic writes go to its .rpo/tmp
    for code in ("pyproject.toml", "rpo", "world"):  # evaluate keys its cache on the code it runs (rpo.deps)
        (root / code).symlink_to(REPO / code)
    return context(root, cfg, subject)


class Meter:
    """Wall time and peak memory of one call: GPU memory allocated on CUDA, resident set size on the CPU."""

    def __init__(self, device):
        self.device = device

    def __call__(self, fn, ctx) -> dict:
        """seconds (wall), cpu_seconds (user + kernel, this process's threads), kernel_seconds, peak (bytes)."""
        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            with contextlib.suppress(OSError):  # where the kernel refuses, the peak is the process's so far
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak RSS
        start, times = time.perf_counter(), os.times()
        fn(ctx)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        end = os.times()
        user, kernel = end.user - times.user, end.system - times.system
        return {"seconds": time.perf_counter() - start, "cpu_seconds": user + kernel, "kernel_seconds": kernel,
                "peak": self.peak()}

    def peak(self) -> int:
        import torch

        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated()
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def describe(self) -> str:
        import torch

        from rpo.cpu import has_amx

        if self.device.type == "cuda":
            return f"{torch.cuda.get_device_name()} (peak: GPU memory allocated)"
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), platform.processor())
        units = f"{torch.backends.cpu.get_cpu_capability()}, {'AMX' if has_amx() else 'no AMX'}"
        return f"CPU {cpu} ({units}), {torch.get_num_threads()} threads (peak: process RSS)"


def warm_up(ctx) -> None:
    """Imports, lazy initialisation and first kernel choices are paid once per process, before any timing."""
    from rpo.device import pick_device
    from rpo.generate import generate, stage_pipeline
    from rpo.metrics import MetricModels
    from rpo.scoring import RewardModel

    device = pick_device(ctx.cfg.device)
    pipe = stage_pipeline(ctx.cfg.model, device)
    image = generate(pipe, ["a photo"], [0], steps=1, guidance=7.5, resolution=ctx.resolution, batch_size=1)
    RewardModel.of(ctx.cfg.reward, image, ctx.token, device).score(image, ["a photo"])
    MetricModels(ctx.cfg.evaluate, device).reference(image)


def run(args) -> dict:
    import torch

    from rpo import stages
    from rpo.device import pick_device

    from bench import naive

    device = pick_device(args.device)
    if args.arch != "tiny":
        from bench.models import build

        models = build(args.divisor, "cuda" if device.type == "cuda" else "cpu", args.arch)
    else:
        from rpo import tiny

        models = {name: str(tiny.path(name)) for name in ("tiny", "tiny-clip", "tiny-clip-metric", "tiny-dino")}
    paper = bench_config(args, models, 1.0)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rpo-bench-"))
    ours = workspace(work / "ours", args.subject, bench_config(args, models, args.fraction))
    theirs = workspace(work / "naive", args.subject, bench_config(args, models, args.naive_fraction))
    n_refs, meter = len(ours.subject.images), Meter(device)
    warm_up(ours)
    rows = []
    ours_fns = {name: stages.module(name).run for name in UNIT}
    for stage in args.stages:
        full = units(stage, paper, n_refs)
        row = {"stage": stage, "unit": UNIT[stage], "full": full}
        for who, ctx, fns in (("ours", ours, ours_fns), ("naive", theirs, naive.STAGE_FUNCTIONS)):
            if stage not in fns or (who == "naive" and args.no_naive):
                continue  # the official code has no separate selection: it keeps the best pipeline as it trains
            measured, ran = meter(fns[stage], ctx), units(stage, ctx.cfg, n_refs)
            scale = full / ran  # the linear extrapolation to the paper's counts
            row[who] = {"ran": ran, "seconds": measured["seconds"], "extrapolated": measured["seconds"] * scale,
                        "cpu_seconds": measured["cpu_seconds"] * scale,
                        "kernel_seconds": measured["kernel_seconds"] * scale, "peak": measured["peak"]}
        rows.append(row)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return {"machine": meter.describe(), "device": device.type, "torch": torch.__version__, "arch": args.arch,
            "divisor": args.divisor, "resolution": args.resolution, "fraction": args.fraction,
            "naive_fraction": args.naive_fraction, "overrides": args.set or [], "subject": args.subject,
            "n_refs": n_refs, "counts": describe_counts(paper), "rows": rows}


def table(result: dict) -> str:
    narrowed = "" if result["divisor"] == 1 else f", every width / {result['divisor']}"
    naive = any("naive" in row for row in result["rows"])
    arch = ARCH[result["arch"]] + ("" if result["arch"] == "tiny" else f", random weights{narrowed}")
    source = "with the overrides" if result["overrides"] else "the paper's"
    lines = [
        f"RPO benchmark: {arch}, {result['resolution']} px, subject {result['subject']} ({result['n_refs']} references)",
        f"machine: {result['machine']}, torch {result['torch']}",
        f"counts ({source}): {result['counts']}"
        + (" (preset paper-sdxl)" if result["arch"] == "sdxl" else ""),
        f"ours ran at fraction {result['fraction']:g}, "
        + (f"naive at {result['naive_fraction']:g} of them; " if naive else "naive not run; ")
        + "seconds are extrapolated linearly to those counts",
        *([f"overrides: {' '.join(result['overrides'])}"] if result["overrides"] else []),
        "wall and CPU seconds at those counts; kernel: the share of CPU time spent in the kernel (page faults)",
        "",
        f"{'stage':<9} {'':<5} | {'ran':>9} {'wall s':>8} {'CPU s':>8} {'kernel':>6} {'rate':>15} {'peak':>9} | naive/ours",
    ]
    totals, cpu = {"ours": 0.0, "naive": 0.0}, {"ours": 0.0, "naive": 0.0}
    for row in result["rows"]:
        for who in ("ours", "naive"):
            r = row.get(who)
            if r is None:
                continue
            totals[who] += r["extrapolated"]
            cpu[who] += r["cpu_seconds"]
            rate, kernel = r["ran"] / r["seconds"], r["kernel_seconds"] / max(r["cpu_seconds"], 1e-9)
            ratio = (f"{row['naive']['extrapolated'] / row['ours']['extrapolated']:.1f}x"
                     if who == "naive" and "ours" in row else "")
            lines.append(f"{row['stage'] if who == 'ours' else '':<9} {who:<5} | {r['ran']:>4}/{row['full']:<4} "
                         f"{r['extrapolated']:>8.1f} {r['cpu_seconds']:>8.1f} {kernel:>6.1%} "
                         f"{rate:>8.2f} {row['unit'] + '/s':<6} {r['peak'] / 2**30:>5.2f} GiB | {ratio}")
    lines += ["", f"total: ours {totals['ours']:.1f} s ({totals['ours'] / 60:.1f} min)"
              + (f", naive {totals['naive']:.1f} s ({totals['naive'] / 60:.1f} min)" if naive else "")]
    if totals["naive"]:
        if result["device"] == "cpu":  # process CPU time does not count other processes' load on a shared machine
            lines.append(f"overall naive/ours by process CPU time: {cpu['naive'] / cpu['ours']:.1f}x")
        lines.append(f"overall naive/ours: {totals['naive'] / totals['ours']:.1f}x")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, auto (default: cpu)")
    p.add_argument("--arch", choices=tuple(ARCH), default="tiny",
                   help="tiny: the embedded tiny models; sd21: SD 2.1's U-Net, VAE, text encoder (random weights); "
                        "sdxl: SDXL base 1.0's U-Net, VAE, both text encoders (random weights, preset paper-sdxl: "
                        "LoRA; ours only, the naive procedure mirrors the official SD script)")
    p.add_argument("--fraction", type=float, default=1.0, help="fraction of the paper's counts ours runs (default 1)")
    p.add_argument("--naive-fraction", type=float, help="fraction the naive procedure runs (default: --fraction)")
    p.add_argument("--no-naive", action="store_true", help="time ours only")
    p.add_argument("--divisor", type=int, default=1, help="sd21, sdxl: divide every width by this (1, 2, 4, 8)")
    p.add_argument("--resolution", type=int, help="pixels (default: 512 for sd21, 1024 for sdxl, 32 for tiny)")
    p.add_argument("--subject", default="duck_toy", help="a folder of data/subjects (default: duck_toy)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--until", choices=tuple(UNIT), default=list(UNIT)[-1], metavar="STAGE",
                   help=f"stop after this stage (default: {list(UNIT)[-1]}; stages: {', '.join(UNIT)})")
    p.add_argument("--workdir", help="keep the artifacts of both procedures here (default: a temporary folder)")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a parameter of both procedures after the counts (smoke runs; printed in the header)")
    args = p.parse_args(argv)
    args.naive_fraction = args.fraction if args.naive_fraction is None else args.naive_fraction
    args.resolution = args.resolution or {"tiny": 32, "sd21": 512, "sdxl": 1024}[args.arch]
    args.no_naive = args.no_naive or args.arch == "sdxl"
    args.stages = list(UNIT)[: list(UNIT).index(args.until) + 1]  # each stage reads what the ones before it wrote
    for name in ("fraction", "naive_fraction"):
        if not 0 < getattr(args, name) <= 1:
            p.error(f"--{name.replace('_', '-')} must be in (0, 1]")
    if args.divisor not in (1, 2, 4, 8):
        p.error("--divisor must be 1, 2, 4 or 8 (widths and norm groups must stay divisible)")
    return args


def main(argv=None) -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")
    args = parse_args(argv)
    import torch

    from rpo.allocator import keep_freed_memory
    from rpo.cli import quiet_libraries

    quiet_libraries()
    keep_freed_memory()  # as every rpo process does; the naive procedure, in this process, gains from it too
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
