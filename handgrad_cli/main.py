"""The `handgrad` command: check, mutants, train. A layer above `handgrad` and `jax_ref`.

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
        description="Verify hand-derived gradients against autodiff and finite differences; "
        "prove the checks can fail; train on the hand gradients.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    _add_check(sub)
    _add_mutants(sub)
    _add_train(sub)
    return p


def _add_check(sub) -> None:
    c = sub.add_parser(
        "check",
        help="sweep every function and the derivation ledger, or the rules a file of yours "
        "declares; write gradcheck.json/.md/.png",
        description="Without TARGET: sweep every registered derivation's functions over edge "
        "and random shapes, and its ledger. With TARGET (a PATH.py or a module name that "
        "defines CHECKS = [jax_ref.GradientCheck(...), jax_ref.RuleCheck(...), ...], see "
        "examples/rules.py): check those hand gradients, custom_vjp/custom_jvp or hand-written "
        "rules. Exit 0 pass, 1 a check failed or an "
        "input was judged by no oracle, 2 bad usage.",
    )
    c.add_argument(
        "target",
        nargs="?",
        metavar="TARGET",
        help="a checks file (PATH.py) or module defining CHECKS (default: the registered "
        "derivations)",
    )
    c.add_argument(
        "--derivation",
        action="append",
        metavar="NAME",
        help="check only this derivation (repeatable; default: all registered)",
    )
    c.add_argument(
        "--dtype",
        choices=["float32", "float64", "all"],
        default="all",
        help="dtypes of the sweep (default all; a checks file sets its own)",
    )
    c.add_argument(
        "--seed", type=_positive_int, default=0, help="random seed of the sweep (default 0)"
    )
    c.add_argument(
        "--examples",
        type=_positive_int,
        default=2,
        help="random shapes beyond the 8 edge shapes (default 2)",
    )
    c.add_argument("--out", default="reports", help="report directory (default reports/)")
    c.add_argument("--json", action="store_true", help="print the JSON report to stdout")
    c.add_argument(
        "--verify",
        metavar="REPORT.json",
        help="rerun and compare with a committed gradcheck.json instead of writing reports: "
        "the same checks, the same verdicts, every error within a factor 4 of the committed "
        "one (or both under 1e-3 of the tolerance); exit 1 if not reproduced",
    )


def _add_mutants(sub) -> None:
    m = sub.add_parser(
        "mutants", help="run every check against every catalogued mutant; write mutants.json/.md"
    )
    m.add_argument(
        "--derivation",
        action="append",
        metavar="NAME",
        help="only this derivation's mutants (repeatable; default: all registered)",
    )
    m.add_argument(
        "--seed", type=_positive_int, default=0, help="random seed of the inputs (default 0)"
    )
    m.add_argument("--out", default="reports", help="report directory (default reports/)")
    m.add_argument("--json", action="store_true", help="print the JSON report to stdout")


def _add_train(sub) -> None:
    from handgrad_cli import audit, train

    train.add_parser(sub)
    audit.add_parser(sub)


def _x64() -> None:
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 checks need it; float32 stays float32


def has_plots(command: str) -> bool:
    """matplotlib draws the PNGs; without it the other files are still written, and one
    line says what to install (it is an optional dependency)."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is not None:
        return True
    print(
        f"{command}: no plot: matplotlib is not installed (pip install matplotlib, or "
        "'handgrad[dev]'); the JSON and Markdown reports are written",
        file=sys.stderr,
    )
    return False


def _derivations(names):
    from jax_ref.derivations import get

    return None if not names else [get(n) for n in names]


def out_dir_problem(path: str) -> str | None:
    """Why reports cannot be written under `path`, or None. Run before any work: the
    directory is created (as writing would), a probe file written, and what was created
    removed again."""
    import tempfile
    from pathlib import Path

    p = Path(path)
    for q in [p, *p.parents]:
        if q.exists() and not q.is_dir():
            return f"--out {path}: {q} exists and is not a directory"
    missing = [q for q in [p, *p.parents] if not q.exists()]
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as e:
        return f"--out {path}: cannot write there ({e.strerror or e})"
    finally:
        for q in missing:  # leave no trace: the reports create it again when written
            try:
                q.rmdir()
            except OSError:
                break
    return None


def _check_rules(args) -> int:
    from jax_ref.declared import load_checks, run_declared

    try:
        source, checks = load_checks(args.target)
    except ValueError as e:
        print(f"handgrad check: error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    bar = progress_bar(len(checks), "rules", unit="check")
    try:
        report = run_declared(source, checks, on_check=lambda c: bar(source, c.name))
    finally:
        bar.close()
    return _write_check(args, report, time.perf_counter() - t0)


def verify_report(report: dict, committed: dict) -> list[str]:
    """What differs between a fresh check and a committed one, beyond rounding noise: the
    set of checks, any verdict, an error off by more than a factor 4 (both above 1e-3 of
    their tolerance: below that, the last digits of float32 rounding are all there is)."""
    import math

    def key(c):
        return (c["derivation"], c["function"], c["case"], c["parameter"], c["oracle"])

    new, old = {key(c): c for c in report["checks"]}, {key(c): c for c in committed["checks"]}
    problems = [f"missing now: {k}" for k in old.keys() - new.keys()]
    problems += [f"new now: {k}" for k in new.keys() - old.keys()]
    for k in new.keys() & old.keys():
        a, b = new[k], old[k]
        if a["status"] != b["status"]:
            problems.append(f"{k}: {b['status']} in the report, {a['status']} now")
            continue
        tol = max(a.get("tolerance") or 0.0, 1e-300)
        x, y = a["max_rel_err"], b["max_rel_err"]
        if not (math.isfinite(x) and math.isfinite(y)):
            if (math.isfinite(x), math.isnan(x)) != (math.isfinite(y), math.isnan(y)):
                problems.append(f"{k}: error {y} in the report, {x} now")
            continue
        if max(x, y) > 1e-3 * tol and not (max(x, y) <= 4 * min(x, y)):
            problems.append(f"{k}: error {y:.3g} in the report, {x:.3g} now")
    if [e["passed"] for e in report["ledger"]] != [e["passed"] for e in committed["ledger"]]:
        problems.append("the ledger's verdicts differ")
    return sorted(problems)


def _load_committed(path: str) -> dict:
    """The report `--verify` compares with, or a ValueError saying why it cannot be read."""
    from pathlib import Path

    try:
        text = Path(path).read_text()  # before importing JAX: a wrong path fails fast
        from jax_ref.report import from_json

        committed = from_json(text)
    except (OSError, ValueError) as e:
        raise ValueError(f"--verify {path}: cannot read a gradcheck.json ({e})") from e
    if not isinstance(committed, dict) or not {"checks", "ledger"} <= set(committed):
        raise ValueError(f"--verify {path}: not a gradcheck.json (no checks and ledger)")
    return committed


def _verify(args, report) -> int:
    problems = verify_report(report, args.committed)
    n = len(report["checks"])
    if problems:
        print(f"NOT REPRODUCED: {len(problems)} of {n} checks differ from {args.verify}:")
        for p in problems[:30]:
            print(f"  {p}")
        return 1
    print(
        f"REPRODUCED: {n} checks and {len(report['ledger'])} ledger steps match {args.verify} "
        "(same verdicts; every error within a factor 4, or under 1e-3 of its tolerance)"
    )
    if not report["passed"]:  # reproduced, and what it reproduces is a failure
        print("FAILED: the reproduced report does not pass (see its failed or unjudged checks)")
        return 1
    return 0


def _write_check(args, report, seconds) -> int:
    from jax_ref.report import gradcheck_markdown, plot_gradcheck, to_json, write_files

    if getattr(args, "verify", None):
        return _verify(args, report)

    files = {
        "gradcheck.json": to_json(report),
        "gradcheck.md": gradcheck_markdown(report),
        "gradcheck.png": lambda path: plot_gradcheck(report, path),
    }
    if not has_plots("handgrad check"):
        del files["gradcheck.png"]
    written = write_files(args.out, files)
    if args.json:
        sys.stdout.write(to_json(report))
    else:
        _print_check_table(report)
        print(
            f"{'PASSED' if report['passed'] else 'FAILED'} in {seconds:.1f} s; wrote "
            + ", ".join(str(w) for w in written)
        )
    return 0 if report["passed"] else 1


def _check(args) -> int:
    if args.verify:
        try:
            args.committed = _load_committed(args.verify)
        except ValueError as e:
            print(f"handgrad check: error: {e}", file=sys.stderr)
            return 2
    problem = None if args.verify else out_dir_problem(args.out)
    if problem:
        print(f"handgrad check: error: {problem}", file=sys.stderr)
        return 2
    _x64()
    if args.target:
        return _check_rules(args)
    import numpy as np

    from jax_ref.sweep import run_check

    dtypes = {"float32": (np.float32,), "float64": (np.float64,), "all": (np.float64, np.float32)}[
        args.dtype
    ]
    try:
        derivations = _derivations(args.derivation)
    except ValueError as e:
        print(f"handgrad check: error: {e}", file=sys.stderr)
        return 2
    t0 = getattr(args, "started", None) or time.perf_counter()
    import os

    from jax_ref.derivations import REGISTRY

    chosen = derivations or list(REGISTRY.values())
    if len(chosen) > 1 and (os.cpu_count() or 1) > 1:
        report = _check_in_parallel(chosen, args.seed, dtypes, args.examples)
    else:
        report = run_check(
            seed=args.seed, dtypes=dtypes, examples=args.examples, derivations=derivations
        )
    return _write_check(args, report, time.perf_counter() - t0)


def _check_in_parallel(derivations, seed, dtypes, examples) -> dict:
    """The sweep in processes, as many at once as there are cores: each derivation's
    cases in two contiguous halves, one to each core; the report is the serial one's.
    Tasks `run()` submitted at the program's start are collected, not submitted again."""
    import os
    import threading

    from jax_ref.sweep import assemble, derivation_rows

    global _POOL, _PENDING
    parts = 2 if (os.cpu_count() or 1) > 1 else 1
    pool, pending, _POOL, _PENDING = (
        _POOL or worker_pool(parts * len(derivations)),
        _PENDING,
        None,
        None,
    )
    threading.Thread(target=_import_matplotlib, daemon=True).start()  # while we wait
    try:
        if pending is None:
            import jax

            cache = jax.config.jax_compilation_cache_dir
            pending = {
                (d.name, p): pool.submit(
                    derivation_rows, d.name, seed, dtypes, examples, cache, p, parts
                )
                for d in derivations
                for p in range(parts)
            }
            results = {t: f.result() for t, f in pending.items()}  # re-raises a crash
        else:  # (module, part) -> (derivation name or None, checks, ledger)
            done = {(m, p): f.result() for (m, p), f in pending.items()}
            results = {(r[0], p): r[1:] for (_, p), r in done.items() if r[0] is not None}
    finally:
        stop_workers(pool)
    checks = [row for d in derivations for p in range(parts) for row in results[d.name, p][0]]
    ledger = [e for d in derivations for p in range(parts) for e in results[d.name, p][1]]
    return assemble(seed, derivations, checks, ledger)


def worker_pool(tasks: int):
    """Worker processes, no more than tasks or cores; spawned: a fresh JAX each."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    workers = max(1, min(os.cpu_count() or 1, tasks))
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def _import_matplotlib() -> None:
    try:
        import matplotlib.pyplot  # noqa: F401
    except ImportError:
        pass  # has_plots says so later


def stop_workers(pool) -> None:
    """Ends the workers now: without waiting for them to tear JAX down once their results
    are in, or for tasks nobody will read after a usage error."""
    # the processes first: shutdown() forgets them (the pool's _processes becomes None)
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        p.terminate()
    pool.shutdown(wait=True)


def _failure_words(c: dict) -> str:
    """A failed row in one line: leaf, oracle, error against tolerance, worst place, both
    values, why."""
    where = list(c.get("worst_index") or [])
    values = ""
    if c["oracle"] != "structure":
        values = (
            f"; worst at {c.get('index_kind', 'element')} {where}: hand {c['got']!r}, "
            f"{c['oracle']} {c['want']!r}"
        )
    return (
        f"{c['parameter']} [{c['oracle']}] rel err {c['max_rel_err']:.3g} vs tolerance "
        f"{c['tolerance']:.3g}"
        + (f" ({c['tolerance_set']})" if c.get("tolerance_set") else "")
        + values
        + (f" ({c['note']})" if c["note"] else "")
    )


def _print_check_table(report: dict) -> None:
    from jax_ref.report import group_by

    print(
        f"{'function':26s} {'oracle':18s} {'dtype':8s} {'checks':>6s} {'failed':>6s} "
        f"{'inconcl.':>8s} {'worst err/tol':>13s}"
    )
    for (f, o, d), g in group_by(report["checks"], ("function", "oracle", "dtype")).items():
        judged = [c for c in g if c["status"] != "inconclusive"]
        worst = (
            max((c["max_rel_err"] / c["tolerance"] if c["tolerance"] else 0.0) for c in judged)
            if judged
            else float("nan")
        )
        failed = sum(c["status"] == "failed" for c in g)
        unsure = sum(c["status"] == "inconclusive" for c in g)
        loose = sorted({c["tolerance_set"] for c in g if c.get("tolerance_set")})
        print(
            f"{f:26s} {o:18s} {d:8s} {len(g):6d} {failed:6d} {unsure:8d} {worst:13.2e}"
            + (f"  (tolerance {'; '.join(loose)})" if loose else "")
        )
    counts = report["counts"]
    print(
        f"checks: {counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['inconclusive']} inconclusive (not judged by that oracle); "
        f"{len(report['unjudged'])} outputs judged by no oracle"
    )
    for u in report["unjudged"][:10]:
        print(f"  not judged: {u}")
    apart = report.get("below_resolution", [])
    if apart:
        print(
            f"{len(apart)} comparisons set apart, not counted: the referee's values sit below "
            "the rounding of their scale (gradcheck.md says which)"
        )
    for c in [c for c in report["checks"] if c["status"] == "failed"][:20]:
        print(f"  FAILED {c['function']}: {_failure_words(c)}")
    bad = [e for e in report["ledger"] if not e["passed"]]
    if not report["ledger"]:
        return
    print(
        f"ledger: {len(report['ledger']) - len(bad)}/{len(report['ledger'])} steps hold"
        + (f"; first wrong: {bad[0]['chain']}: {bad[0]['step']}" if bad else "")
    )


def progress_bar(total: int, label: str, unit: str = "mutant"):
    """A tqdm bar when tqdm is installed, else one line per item on stderr."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        count = iter(range(1, total + 1))

        def update(derivation, mutant):
            print(f"  [{next(count)}/{total}] {derivation}: {mutant}", file=sys.stderr, flush=True)

        update.close = lambda: None
        return update
    bar = tqdm(total=total, desc=label, unit=unit, leave=False)

    def update(derivation, mutant):
        bar.set_postfix_str(f"{derivation}: {mutant}", refresh=False)
        bar.update(1)

    update.close = bar.close
    return update


def _kill_in_parallel(derivations, seed, bar, total) -> list[dict]:
    """Each derivation's kill matrix in its own process, as many at once as there are
    cores (2 here): compiling is single-threaded, so the mutants finish in the time of the
    largest derivation instead of the sum. Rows come back in registry order."""
    import multiprocessing
    import os
    import queue
    from concurrent.futures import ProcessPoolExecutor

    import jax

    from jax_ref.mutants import kill_rows

    cache = jax.config.jax_compilation_cache_dir
    ctx = multiprocessing.get_context("spawn")  # a fresh JAX per process: no fork of threads
    biggest_first = sorted(
        derivations, key=lambda d: -len(d.cases(0, random_cases=0)) * len(d.mutants)
    )
    workers = max(1, min(len(derivations), os.cpu_count() or 1))
    with ctx.Manager() as manager, ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        messages = manager.Queue()
        futures = {
            d.name: pool.submit(kill_rows, d.name, seed, messages, cache) for d in biggest_first
        }
        seen = 0
        while seen < total and not all(f.done() for f in futures.values()):
            try:
                message = messages.get(timeout=0.5)
            except queue.Empty:
                continue
            seen += 1
            bar(*message.split(": ", 1))
        results = {name: f.result() for name, f in futures.items()}  # re-raises a crash
    return [row for d in derivations for row in results[d.name]]


def _mutants(args) -> int:
    problem = out_dir_problem(args.out)
    if problem:
        print(f"handgrad mutants: error: {problem}", file=sys.stderr)
        return 2
    _x64()
    from jax_ref.derivations import REGISTRY
    from jax_ref.report import mutants_markdown, to_json, write_files

    try:
        derivations = _derivations(args.derivation) or list(REGISTRY.values())
    except ValueError as e:
        print(f"handgrad mutants: error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    total = sum(len(d.mutants) for d in derivations)
    bar = progress_bar(total, "mutants")
    try:
        rows = _kill_in_parallel(derivations, args.seed, bar, total)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    errors = sum(bool(r["harness_errors"]) for r in rows)
    report = {
        "total": len(rows),
        "killed": sum(r["killed"] for r in rows),
        "harness_errors": errors,
        "seed": args.seed,
        "properties": {d.name: list(d.properties) for d in derivations},
        "mutants": rows,
    }
    written = write_files(
        args.out, {"mutants.json": to_json(report), "mutants.md": mutants_markdown(report)}
    )
    if args.json:
        sys.stdout.write(to_json(report))
    else:
        for r in rows:
            state = "killed  " if r["killed"] else "SURVIVED"
            print(
                f"{state} {r['derivation']}: {r['name']:24s} by "
                f"{', '.join(r['killed_by']) or '-'}"
                + (
                    f"; HARNESS ERROR in {', '.join(r['harness_errors'])}"
                    if r["harness_errors"]
                    else ""
                )
            )
        print(
            f"{report['killed']}/{report['total']} killed, {errors} harness errors, in "
            f"{seconds:.1f} s; wrote " + ", ".join(str(w) for w in written)
        )
    ok = report["killed"] == report["total"] and not errors and not any(r["missed"] for r in rows)
    return 0 if ok else 1


def run() -> int:
    """The `handgrad` program: `main` with the compilation cache (jax_ref.runtime), the
    sweep's tasks submitted before this process imports JAX."""
    started = time.perf_counter()
    args, code = _parse(sys.argv[1:])
    if args is None:
        return code
    args.started = started
    _start_sweep(args)
    try:
        from jax_ref.runtime import use_compilation_cache

        use_compilation_cache(cache_dir())
        return _dispatch(args)
    finally:
        if _POOL is not None:  # the command ended before the sweep (a usage error): no wait
            stop_workers(_POOL)


_POOL = None  # the sweep's worker processes, started early by _start_sweep
_PENDING = None  # the sweep's tasks, submitted by _start_sweep: {(module, part): future}


def _warm() -> None:
    """A worker's first task: the imports every sweep task needs."""
    import jax_ref.derivations
    import jax_ref.sweep  # noqa: F401


def _start_sweep(args) -> None:
    """For a parallel sweep, spawn the workers before this process imports JAX, and, for
    the whole registry, submit its tasks (two per spec module, found without importing
    them): the workers compute while this process imports."""
    global _POOL, _PENDING
    import os
    from pathlib import Path

    sweep = args.command == "check" and not args.target and len(args.derivation or []) != 1
    if not sweep or (os.cpu_count() or 1) < 2 or (not args.verify and out_dir_problem(args.out)):
        return
    spec_dir = Path(__file__).resolve().parent.parent / "jax_ref" / "derivations"
    modules = sorted(p.stem for p in spec_dir.glob("[!_]*.py"))
    n = len(args.derivation or []) or len(modules)
    _POOL = worker_pool(2 * n)
    if args.derivation:  # names to check first: only warm the workers up
        for _ in range(min(os.cpu_count() or 1, 2 * n)):
            _POOL.submit(_warm)
        return
    dtypes = {"float32": ("float32",), "float64": ("float64",), "all": ("float64", "float32")}
    task = (args.seed, dtypes[args.dtype], args.examples, cache_dir())
    _PENDING = {
        (m, p): _POOL.submit(_module_rows, m, *task, p, 2) for m in modules for p in range(2)
    }


def _module_rows(*args):
    """A worker's task: jax_ref.sweep.module_rows (imported there, not here)."""
    from jax_ref.sweep import module_rows

    return module_rows(*args)


def cache_dir() -> str | None:
    """Where compiled programs are kept (jax_ref.runtime.use_compilation_cache sets it
    up): $HANDGRAD_CACHE_DIR (`off`: nowhere), else $XDG_CACHE_HOME/handgrad/xla or
    ~/.cache/handgrad/xla."""
    import os
    from pathlib import Path

    where = os.environ.get("HANDGRAD_CACHE_DIR")
    if where == "off":
        return None
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return str(Path(where) if where else Path(base) / "handgrad" / "xla")


def _parse(argv):
    """(the parsed arguments, None), or (None, the exit code: 2 bad usage, 0 --help)."""
    try:
        return _parser().parse_args(argv), None
    except SystemExit as e:  # argparse has printed the usage error or the help
        return None, int(e.code or 0)


def _dispatch(args) -> int:
    if args.command == "train":
        from handgrad_cli.train import run as train

        return train(args)
    if args.command == "audit":
        from handgrad_cli.audit import run as audit

        return audit(args)
    return {"check": _check, "mutants": _mutants}[args.command](args)


def main(argv: list[str] | None = None) -> int:
    """The `handgrad` command on `argv` (default sys.argv[1:]); returns the exit code."""
    args, code = _parse(argv)
    return code if args is None else _dispatch(args)


if __name__ == "__main__":
    sys.exit(main())
