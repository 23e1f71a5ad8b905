"""`rpo-world`: the synthetic world's own commands: build its models, probe its base model, run its experiment.

examples:
  cd world && uv run dvc repro        rebuild every model (each stage is `rpo-world build STAGE`)
  rpo-world probe --json probe.json   how often the base model draws what prompts ask, per attribute
  rpo-world probe --contexts all      the same, one row per context (which backgrounds are hard to draw on)
  rpo-world draws "a pet in the jungle" --model exports/striped_circle_pet
                                      what a model draws for a prompt: the judges' counts of each attribute
  rpo-world experiment --quick        RPO against its ablations and the baselines on the world's subjects, in minutes
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rpo-world", description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: jobs share the CPU)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from rpo_world.build import STAGES

    p = sub.add_parser("build", help="one stage of the world's pretraining (run in world/, as world/dvc.yaml does)",
                       description="train one of the world's models; resumes from world/work/STAGE/")
    p.add_argument("stage", choices=STAGES, help=", ".join(STAGES))
    p.add_argument("--world", type=Path, default=Path.cwd(), help="the world's pipeline folder (default: here)")

    p = sub.add_parser("probe", help="the base model's prompt following: accuracy per attribute on its own samples",
                       description="sample full-caption prompts with the committed world model and judge them")
    p.add_argument("--n", type=int, default=128, help="prompts per seed (default 128)")
    p.add_argument("--seeds", nargs="+", type=int, default=[11, 12, 21, 22], help="sampling seeds")
    p.add_argument("--guidance", nargs="+", type=float, help="guidance scales (default: the world preset's)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    from rpo_world.grammar import CONTEXTS

    p.add_argument("--contexts", nargs="+", metavar="CONTEXT", choices=["all", *sorted(CONTEXTS)],
                   help="one row per context: the same scenes set in each (all: every context of the world)")
    p.add_argument("--json", type=Path, help="also write the accuracies to this file")

    p = sub.add_parser("draws", help="what a model draws for prompts: how many samples the judges read as each value",
                       description="sample each prompt n times and count what the judges read, attribute by attribute")
    p.add_argument("prompts", nargs="+", metavar="PROMPT", help='e.g. "a pet in the jungle" or "a sks pet in the snow"')
    p.add_argument("--model", default="world",
                   help="a world pipeline: world (the committed base model) or a folder, e.g. one `rpo export` wrote")
    p.add_argument("--n", type=int, default=32, help="samples per prompt (default 32)")
    p.add_argument("--seed", type=int, default=5, help="sampling seed (default 5)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the world preset's)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    p.add_argument("--json", type=Path, help="also write the counts to this file")

    from rpo_world import experiment

    experiment.add_arguments(sub.add_parser(
        "experiment", help="RPO against its ablations and the baselines on every world subject and seed (rpo ablate's engine)",
        description=experiment.__doc__.split("\n")[0]))
    args = parser.parse_args(argv)
    if args.command == "draws" and args.model != "world" and not (Path(args.model) / "model_index.json").is_file():
        parser.error(f"--model {args.model}: not a pipeline folder (no model_index.json); "
                     "use world or a folder `rpo export` wrote")

    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from rpo.cli import quiet_libraries

    quiet_libraries()
    if args.command == "build":
        from rpo_world.build import run

        run(args.stage, args.world.resolve())  # what `python -m rpo_world.build STAGE` (world/dvc.yaml) runs
    elif args.command == "probe":
        from rpo_world.probe import probe, probe_contexts, world_guidance

        rows = probe(args.n, args.seeds, args.guidance or [world_guidance()], args.steps, probe_contexts(args.contexts))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
    elif args.command == "draws":
        from rpo_world.probe import draws

        rows = draws(args.model, args.prompts, args.n, args.seed, args.steps, args.guidance)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
    else:
        return experiment.cli(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
