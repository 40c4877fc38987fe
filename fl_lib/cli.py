"""`python -m fl_lib {run,traffic,leakage,flower,report,slides}`: flags made from `Config`'s fields."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from .core.config import FIELD_DOCS, FIELD_NAMES, PRESETS, RULES, Config, parse_value, preset
from .core.errors import ConfigError, DataError, FLError

class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (exit 2), not a usage dump."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    # Required: a bare `run` used to start the paper preset (300 rounds of SqueezeNet, hours on a CPU).
    p.add_argument("--preset", required=True, metavar="NAME",
                   help=f"starting point, one of {', '.join(PRESETS)} (required; smoke finishes in seconds, "
                        f"quick in about 10 minutes on a CPU, paper takes hours); the flags below override it")
    defaults = Config()
    for f in dataclasses.fields(Config):
        rule = RULES[f.name]
        default = getattr(defaults, f.name)
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, metavar="V", default=None,
                       help=f"{FIELD_DOCS[f.name]}; {rule.describe()} (paper: {default})")


def config_from_args(args) -> Config:
    """The preset with every flag the user gave applied on top, checked."""
    overrides = {name: parse_value(name, getattr(args, name)) for name in FIELD_NAMES
                 if getattr(args, name, None) is not None}
    return preset(args.preset, **overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m fl_lib", description="Federated learning with quantized uploads.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", help="run one experiment (cached by its config)",
                       description="Run FedAvg/FedSGD; writes config.json, metrics.csv, timings.csv, summary.json.")
    _add_config_flags(p)
    p.add_argument("--out", default=None, help="results folder (default: data/runs/<config hash>)")
    p.add_argument("--force", action="store_true", help="rerun even if a finished run is stored")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("traffic", help="upload bytes per round for each bit width (the paper's Table 1)")
    p.add_argument("--model", default="squeezenet1_0", help="model name")
    p.add_argument("--num-clients", type=int, default=10, help="clients uploading per round")
    p.add_argument("--num-classes", type=int, default=10, help="output classes")
    p.add_argument("--bits", type=int, nargs="+", default=[32, 16, 8, 4, 2], help="bit widths")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    from .privacy import leakage
    from .study import report

    p = sub.add_parser("leakage", help="gradient inversion of one client upload at several bit widths (leakage.py)",
                       description="Reconstruct a client's images from what the server receives; prints PSNR.")
    leakage.add_arguments(p)
    p = sub.add_parser("flower", help="the same experiment on Flower (flower.py): simulation, or a real federation",
                       description="Run a config on Flower: `run` in its Simulation Runtime on this machine, "
                                   "`deploy` on a running SuperLink and its SuperNodes (README: Beyond one machine).")
    fsub = p.add_subparsers(dest="flower_command", required=True, parser_class=_Parser)
    for name, text in (("run", "Flower's Simulation Runtime: one virtual SuperNode per client, on this machine"),
                       ("deploy", "submit to a SuperLink (flwr run) whose SuperNodes hold partition-id 0..K-1"),
                       ("local", "start a SuperLink and one SuperNode per client on 127.0.0.1, deploy to them, "
                                 "stop them all (also on Ctrl-C)")):
        fp = fsub.add_parser(name, help=text, description=text)
        _add_config_flags(fp)
        fp.add_argument("--out", required=True, help="results folder, written on the machine that runs the server")
        fp.add_argument("--round-timeout", type=float, default=600.0,
                        help="seconds the server waits for a round's uploads; later clients are dropped (600)")
        if name == "deploy":
            fp.add_argument("--superlink", default=None, metavar="NAME",
                            help="SuperLink connection in Flower's config.toml (default: its default connection)")
        if name == "local":
            from .runtime import flower_local
            flower_local.add_arguments(fp)
        if name != "run":
            fp.add_argument("--connect-timeout", type=float, default=120.0,
                            help="seconds the server waits for every SuperNode to connect (120)")
    p = sub.add_parser("reference", help="the published reference runs (reference/): checksums verified, "
                                         "rounds, best accuracy, wall time, and the command that extends each")
    p.add_argument("--prefix", default="", help="only runs whose name starts with this (e.g. shakespeare/)")
    p.add_argument("--extend", metavar="NAME", action="append", default=[],
                   help="replay reference NAME's own config to --rounds rounds (from its checkpoints in --runs "
                        "where kept, else from round 1) and publish it again; repeatable")
    p.add_argument("--all", action="store_true", help="--extend every published run (the one --prefix selects)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds to extend to (default: each run's published rounds, i.e. regenerate it)")
    p.add_argument("--runs", default=None, help="folder of the reference run folders (default data/reference-runs)")
    p = sub.add_parser("report", help="run the notebooks with papermill into an HTML report")
    report.add_arguments(p)
    from .study import slides
    p = sub.add_parser("slides", help="the executed lessons as reveal.js slides that open offline",
                       description="Each lesson as NN_name.slides.html, reusing the report's executed lessons "
                                   "(figures/reports/NAME/) and running those missing or out of date.")
    slides.add_arguments(p)
    return parser


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a bad command line (already reported in one line)
        return e.code
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "traffic":
            return _traffic(args)
        if args.command == "flower":
            return _flower(args)
        if args.command == "reference":
            return _reference(args)
        if args.command == "leakage":
            from .privacy import leakage
            return leakage.main(args)
        if args.command == "slides":
            from .study import slides
            return slides.main(args)
        from .study import report
        return report.main(args)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


def _reference(args) -> int:
    from .study import reference

    if args.rounds is not None and args.rounds < 1:
        raise ConfigError(f"--rounds={args.rounds}: must be at least 1")
    chosen = reference.names(prefix=args.prefix) if args.all else args.extend
    for name in chosen:
        record = reference.extend(name, args.rounds, runs=args.runs,
                                  log=lambda msg: print(msg, file=sys.stderr))
        print(f"published reference/{name}: {record['rounds']} rounds, {record['wall_seconds'] / 3600:.2f} h in all")
    print(reference.format_table(args.prefix))
    return 0


def _run(args) -> int:
    from .runtime import results

    cfg = config_from_args(args)
    out = args.out or results.run_dir(cfg)
    r = results.run(cfg, out, force=args.force, progress=not args.no_progress,
                    log=lambda msg: print(msg, file=sys.stderr))
    s = r.summary
    acc = "n/a" if s["final_test_acc"] is None else f"{s['final_test_acc']:.4f}"
    clock = "" if s.get("total_sim_hours") is None else f", {s['total_sim_hours'] * 60:.1f} simulated minutes"
    privacy = "" if s.get("epsilon") is None else f", epsilon {s['epsilon']:.2f}"
    print(f"{r.dir}: {s['rounds']} rounds, final test accuracy {acc}, "
          f"uploaded {s['total_upload_mb']:.2f} MB{clock}{privacy}, {s['seconds_total']:.1f} s")
    return 0


def _flower(args) -> int:
    from pathlib import Path

    from .runtime import flower

    cfg = config_from_args(args)
    flower.check_flower_config(cfg)
    if args.round_timeout <= 0:
        raise ConfigError(f"round_timeout={args.round_timeout} is not allowed: must be float in (0, inf)")
    if args.flower_command == "run":
        flower.run_simulation(cfg, args.out, round_timeout=args.round_timeout)
        r_dir = Path(args.out)
    elif args.flower_command == "local":
        from .runtime import flower_local
        code = flower_local.run(cfg, args.out, args.port, args.keep_db, args.round_timeout, args.connect_timeout,
                                args.clientapps, args.supernode)
        if code:
            return code
        r_dir = Path(args.out)
    else:
        return flower.deploy(cfg, args.out, args.superlink, args.round_timeout, args.connect_timeout)
    from .runtime.results import load_run

    s = load_run(r_dir).summary
    print(f"{r_dir}: {s['rounds']} rounds on {s['runtime']}, final test accuracy {s['final_test_acc']:.4f}, "
          f"fl_lib counted {s['total_upload_mb']:.2f} MB up; Flower's messages {s['flower_bytes_up'] / 1e6:.2f} MB up, "
          f"{s['flower_bytes_down'] / 1e6:.2f} MB down")
    return 0


def _traffic(args) -> int:
    from .core.quant import check_bits
    from .study.traffic import format_table, traffic_table

    if args.num_clients < 1:
        raise ConfigError(f"num_clients={args.num_clients} is not allowed: must be int in [1, 100000]")
    for b in args.bits:
        check_bits(b)
    rows = traffic_table(args.model, args.num_clients, tuple(args.bits), args.num_classes)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0
