"""The `handgrad` command: check, mutants, train.

Exit codes: 0 success, 1 a check failed (or a mutant survived), 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["main"]


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer; got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; got {n}")
    return n


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="handgrad",
        description="Verify the seed's hand-derived gradients against autodiff and finite "
        "differences; prove the checks can fail; train on the hand gradients.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("check", help="sweep every function and the derivation ledger; write "
                       "gradcheck.json/.md/.png")
    c.add_argument("--dtype", choices=["float32", "float64", "all"], default="all")
    c.add_argument("--seed", type=_positive_int, default=0)
    c.add_argument("--examples", type=_positive_int, default=2,
                   help="random shapes beyond the 8 edge shapes (default 2)")
    c.add_argument("--out", default="reports", help="report directory (default reports/)")
    c.add_argument("--json", action="store_true", help="print the JSON report to stdout")

    m = sub.add_parser("mutants", help="run every check against every catalogued mutant; "
                       "write mutants.json/.md")
    m.add_argument("--seed", type=_positive_int, default=0)
    m.add_argument("--out", default="reports")
    m.add_argument("--json", action="store_true", help="print the JSON report to stdout")

    _add_train(sub)
    return p


def _add_train(sub) -> None:
    from handgrad.train_cli import add_parser

    add_parser(sub)


def _x64() -> None:
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 checks need it; float32 stays float32


def _check(args) -> int:
    _x64()
    import numpy as np

    from jax_ref.report import gradcheck_markdown, plot_gradcheck, to_json, write_files
    from jax_ref.seedcheck import run_check

    dtypes = {"float32": (np.float32,), "float64": (np.float64,),
              "all": (np.float64, np.float32)}[args.dtype]
    t0 = time.perf_counter()
    report = run_check(seed=args.seed, dtypes=dtypes, examples=args.examples)
    seconds = time.perf_counter() - t0
    files = {
        "gradcheck.json": to_json(report),
        "gradcheck.md": gradcheck_markdown(report),
        "gradcheck.png": lambda path: plot_gradcheck(report, path),
    }
    written = write_files(args.out, files)
    if args.json:
        sys.stdout.write(to_json(report))
    else:
        _print_check_table(report)
        print(f"{'PASSED' if report['passed'] else 'FAILED'} in {seconds:.1f} s; wrote "
              + ", ".join(str(w) for w in written))
    return 0 if report["passed"] else 1


def _print_check_table(report: dict) -> None:
    from jax_ref.report import group_by

    print(f"{'function':20s} {'oracle':18s} {'dtype':8s} {'checks':>6s} {'failed':>6s} "
          f"{'worst err/tol':>13s}")
    for (f, o, d), g in group_by(report["checks"], ("function", "oracle", "dtype")).items():
        worst = max((c["max_rel_err"] / c["tolerance"] if c["tolerance"] else 0.0) for c in g)
        failed = sum(not c["passed"] for c in g)
        print(f"{f:20s} {o:18s} {d:8s} {len(g):6d} {failed:6d} {worst:13.2e}")
    bad = [e for e in report["ledger"] if not e["passed"]]
    print(f"ledger: {len(report['ledger']) - len(bad)}/{len(report['ledger'])} steps hold"
          + (f"; first wrong: {bad[0]['chain']}: {bad[0]['step']}" if bad else ""))


def _mutants(args) -> int:
    _x64()
    from jax_ref.mutants import MUTANTS, kill_matrix
    from jax_ref.properties import LOGITS_PROPERTIES, MLP_PROPERTIES
    from jax_ref.report import mutants_markdown, to_json, write_files

    t0 = time.perf_counter()
    matrix = kill_matrix(MUTANTS, seed=args.seed)
    seconds = time.perf_counter() - t0
    rows = []
    for m in MUTANTS:
        killers = {p: tag for p, tag in matrix[m.name].items() if tag}
        rows.append({"name": m.name, "description": m.description, "reveals": m.reveals,
                     "killed": bool(killers), "killed_by": sorted(killers),
                     "first_kill": next(iter(killers.values()), None)})
    report = {"total": len(rows), "killed": sum(r["killed"] for r in rows), "seed": args.seed,
              "properties": list({**LOGITS_PROPERTIES, **MLP_PROPERTIES}), "mutants": rows}
    written = write_files(args.out, {"mutants.json": to_json(report),
                                     "mutants.md": mutants_markdown(report)})
    if args.json:
        sys.stdout.write(to_json(report))
    else:
        for r in rows:
            print(f"{'killed ' if r['killed'] else 'SURVIVED'} {r['name']:24s} "
                  f"by {', '.join(r['killed_by']) or '-'}")
        print(f"{report['killed']}/{report['total']} killed in {seconds:.1f} s; wrote "
              + ", ".join(str(w) for w in written))
    return 0 if report["killed"] == report["total"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad usage, 0 on --help
        return int(e.code or 0)
    handlers = {"check": _check, "mutants": _mutants}
    if args.command == "train":
        from handgrad.train_cli import run

        return run(args)
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
