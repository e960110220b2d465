"""`handgrad audit`: JAX's derivative rules against finite differences of their own forward
passes; writes reports/audit/jax-<version>.json and .md."""

from __future__ import annotations

import sys
import time

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    a = sub.add_parser(
        "audit",
        help="check every derivative rule of JAX (or of MODULE) against finite differences "
        "of its forward pass; write audit/jax-<version>.json/.md",
    )
    a.add_argument(
        "modules",
        nargs="*",
        metavar="MODULE",
        help="dotted modules to audit (default: jax.numpy with linalg and fft, jax.nn, "
        "jax.scipy.special, jax.scipy.stats, jax.scipy.linalg, jax.lax, jax.lax.linalg)",
    )
    a.add_argument("--dtype", default="float64,float32", help="comma-separated (default both)")
    a.add_argument("--order", default="1,2", help="derivative orders, comma-separated (1,2)")
    a.add_argument("--only", nargs="+", metavar="NAME", help="audit only these functions "
                   "(dotted names, or their last part: sinc)")  # fmt: skip
    a.add_argument(
        "--quick",
        action="store_true",
        help="first order, float64, the ordinary point only (minutes, not tens of them)",
    )
    a.add_argument("--out", default="reports/audit", help="directory of the report")
    a.add_argument("--json", action="store_true", help="print the report's JSON to stdout")
    a.add_argument("--workers", type=int, default=0, help="processes (default: the cores)")


def _options(args):
    dtypes = tuple(d.strip() for d in args.dtype.split(",") if d.strip())
    orders = tuple(int(o) for o in args.order.split(",") if o.strip())
    bad = [d for d in dtypes if d not in ("float64", "float32")]
    if bad or not dtypes:
        raise ValueError(f"--dtype must list float64 and/or float32; got {args.dtype!r}")
    if not orders or any(o not in (1, 2) for o in orders):
        raise ValueError(f"--order must list 1 and/or 2; got {args.order!r}")
    if args.quick:
        dtypes, orders = ("float64",), (1,)
    return dtypes, orders


def _select(candidates, only):
    if not only:
        return candidates
    picked = [c for c in candidates if c.name in only or c.name.rsplit(".", 1)[-1] in only]
    missing = [n for n in only if not any(n in (c.name, c.name.rsplit(".", 1)[-1]) for c in picked)]
    if missing:
        raise ValueError(f"--only: no such public function among the audited modules: {missing}")
    return picked


HARD_LIMIT_S = {True: 30.0, False: 90.0}  # a task past this is stopped with its process
RECYCLE = 100  # functions per worker process, then a fresh one


def _worker(conn, cache) -> None:
    """A worker process: audit the functions it is sent until it is sent None."""
    from jax_ref.audit.report import audit_task
    from jax_ref.runtime import use_compilation_cache

    use_compilation_cache(cache)
    while True:
        task = conn.recv()
        if task is None:
            return
        conn.send(audit_task(*task))


def _spawn(cache):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_worker, args=(child, cache), daemon=True)
    p.start()
    return p, parent


def _run_tasks(names, dtypes, orders, quick, workers, progress):
    """Every function audited in worker processes; one that runs past HARD_LIMIT_S (a
    loop inside XLA that does not end at some point, where no signal reaches) is
    stopped with its process, recorded as a skip, and the worker replaced."""
    import os
    from multiprocessing.connection import wait

    from handgrad_cli.main import cache_dir

    limit, cache = HARD_LIMIT_S[bool(quick)], cache_dir()
    pending = list(names)
    n = max(1, min(workers or os.cpu_count() or 1, len(names)))
    pool = [_spawn(cache) for _ in range(n)]
    busy: dict[int, tuple[str, float]] = {}
    done = [0] * n
    results: dict[str, dict] = {}
    try:
        while len(results) < len(names):
            for k, (_, conn) in enumerate(pool):
                if k not in busy and pending:
                    name = pending.pop(0)
                    conn.send((name, dtypes, orders, quick))
                    busy[k] = (name, time.perf_counter())
            ready = wait([pool[k][1] for k in busy], timeout=1.0)
            for k in [k for k in busy if pool[k][1] in ready]:
                name, _ = busy.pop(k)
                try:
                    results[name] = pool[k][1].recv()
                    done[k] += 1
                except (EOFError, OSError):  # the worker died inside XLA (a crash, memory)
                    results[name] = {"function": name, "skip": "its worker process died"
                                     " (a crash inside JAX or XLA)"}  # fmt: skip
                    done[k] = RECYCLE
                if done[k] >= RECYCLE:  # a fresh process: compiled code does not pile up
                    pool[k][0].terminate()
                    pool[k], done[k] = _spawn(cache), 0
                progress(name)
            for k, (name, started) in list(busy.items()):
                if time.perf_counter() - started > limit:
                    pool[k][0].terminate()
                    pool[k] = _spawn(cache)
                    del busy[k]
                    results[name] = {"function": name, "skip": f"did not finish in {limit:.0f} s"}
                    progress(name)
    finally:
        for p, _ in pool:
            p.terminate()
    return [results[nm] for nm in names]


def run(args) -> int:
    """The audit: exit 0 when it ran (findings are its result), 1 when a finding is a
    handgrad false alarm (`checker`), 2 on bad arguments."""
    started = time.perf_counter()
    try:
        dtypes, orders = _options(args)
        import jax

        from jax_ref.audit.discover import DEFAULT_MODULES, discover

        modules = tuple(args.modules) or DEFAULT_MODULES
        candidates = _select(discover(modules), args.only)
    except (ValueError, ImportError) as e:
        print(f"handgrad audit: {e}", file=sys.stderr)
        return 2
    return _audit(args, jax.__version__, modules, candidates, dtypes, orders, started)


def _audit(args, version, modules, candidates, dtypes, orders, started) -> int:
    from handgrad_cli.main import progress_bar
    from jax_ref.audit.markdown import audit_markdown
    from jax_ref.audit.report import assemble_audit
    from jax_ref.report import to_json, write_files

    names = [c.name for c in candidates if not c.skip]
    bar = progress_bar(len(names), "audit", unit="function")
    results = _run_tasks(names, dtypes, orders, args.quick, args.workers, lambda n: bar("audit", n))
    bar.close()
    options = {"dtypes": list(dtypes), "orders": list(orders), "quick": args.quick}
    report = assemble_audit(version, modules, candidates, results, options)
    report["seconds"] = round(time.perf_counter() - started, 1)
    stem = f"jax-{version}" if not args.modules else "audit-" + "_".join(args.modules)
    if args.only:
        stem += "-only"
    text = to_json(report)
    write_files(args.out, {f"{stem}.json": text, f"{stem}.md": audit_markdown(report)})
    if args.json:
        print(text)
    cov, cats = report["coverage"], report["categories"]
    print(
        f"audited {cov['audited']} of {cov['found']} functions ({cov['skipped']} skipped) in "
        f"{report['seconds']:.0f} s; findings: "
        + (", ".join(f"{n} {c}" for c, n in sorted(cats.items())) or "none")
        + f"; wrote {args.out}/{stem}.json, .md",
        file=sys.stderr if args.json else sys.stdout,
    )
    return 1 if cats.get("checker") else 0
