"""The audit as data: one task per function (what a worker process runs), the report's
JSON (coverage, findings) and its Markdown."""

from __future__ import annotations

import collections
import importlib
import time

import jax

__all__ = ["assemble_audit", "audit_task"]


def _resolve(dotted: str):
    mod, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(mod), attr)


BUDGET_S = {True: 6.0, False: 20.0}  # seconds per function (quick, full): then it stops


class _OverTime(Exception):
    pass


def _alarm(signum, frame):
    raise _OverTime()


def _audit_one(name, dtypes, orders, quick, seed):
    from jax_ref.audit.inputs import find_inputs
    from jax_ref.audit.pallas import pallas_setup
    from jax_ref.audit.run import audit_function

    fn = _resolve(name)
    t = time.perf_counter()
    # op by op (each primitive compiles once for every function), unless the function
    # loops (a series, a while_loop): op by op, its loop runs in Python, slowly
    with jax.disable_jit():
        setup = pallas_setup(name) or find_inputs(name, fn)
    eager = time.perf_counter() - t < 0.5
    budget = BUDGET_S[bool(quick)]
    with jax.disable_jit(eager):
        return audit_function(
            name, fn, dtypes=dtypes, orders=orders, quick=quick, seed=seed, setup=setup,
            deadline=time.perf_counter() + budget,
        )  # fmt: skip


def audit_task(name: str, dtypes, orders, quick: bool, seed: int = 0) -> dict:
    """Audit one function (by its dotted name): a plain dict, for a worker to send back."""
    import signal

    from jax_ref.audit.triage import triage

    jax.config.update("jax_enable_x64", True)
    t = time.perf_counter()
    hard = hasattr(signal, "SIGALRM")  # a single call that never returns: stopped at 3x
    if hard:
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(int(3 * BUDGET_S[bool(quick)]) + 5)
    try:
        setup, counts, findings = _audit_one(name, dtypes, orders, quick, seed)
    except _OverTime:
        return {
            "function": name,
            "skip": f"over its time budget ({3 * BUDGET_S[bool(quick)]:.0f} s) in one call",
        }
    except Exception as e:  # the harness met something it cannot drive: a skip, said so
        why = f"the audit could not drive it: {type(e).__name__}: {str(e)[:200]}"
        return {"function": name, "skip": why}
    finally:
        if hard:
            signal.alarm(0)
    if isinstance(setup, str):
        return {"function": name, "skip": setup}
    variants = counts.pop("variants", {})
    return {
        "function": name,
        "skip": "",
        "domain": setup.domain[0],
        "complex": setup.complex_g is not None,
        "variants": variants,
        "counts": counts,
        "findings": [_with_evidence(triage(f)).to_dict() for f in findings],
        "seconds": round(time.perf_counter() - t, 2),
    }


def _with_evidence(f):
    """A bug on a scalar function, weighed by mpmath: where JAX's rule agrees with the
    arbitrary-precision derivative, the rule is right and it is JAX's forward pass that
    departs from the mathematics there (its differences disagree): category `forward`."""
    if f.category != "bug":
        return f
    try:
        from jax_ref.audit.precise import evidence
    except ImportError:  # mpmath is an extra: without it, no such evidence
        return f
    ev = evidence(f.to_dict())
    if ev is None:
        return f
    f.evidence = ev["text"]
    if ev["agrees"]:
        f.category = "forward"
        f.reason = (
            "the rule matches mpmath's derivative of the mathematical function; the"
            f" differences of JAX's forward pass do not (found: {f.reason})"
        )
    return f


def assemble_audit(version: str, modules, candidates, results, options) -> dict:
    """The report: coverage (found, audited, skipped with reasons) and every finding."""
    skipped = [{"function": c.name, "reason": c.skip} for c in candidates if c.skip]
    skipped += [{"function": r["function"], "reason": r["skip"]} for r in results if r["skip"]]
    from jax_ref.audit.run import Finding
    from jax_ref.audit.triage import triage

    audited = [r for r in results if not r["skip"]]
    # the committed triage applied again here: one edited while the workers ran applies
    every = [triage(Finding(**f)).to_dict() for r in audited for f in r["findings"]]
    findings = [f for f in every if f["category"] != "unsettled"]
    unsettled = [f for f in every if f["category"] == "unsettled"]
    by_module = collections.defaultdict(lambda: {"found": 0, "audited": 0})
    for c in candidates:
        by_module[c.name.rpartition(".")[0]]["found"] += 1
    for r in audited:
        by_module[r["function"].rpartition(".")[0]]["audited"] += 1
    judged = collections.Counter()
    for r in audited:
        judged.update(r["counts"])
    flags = [(r["function"], k, v) for r in audited for k, v in r.get("variants", {}).items()]
    return {
        "jax": version,
        "modules": list(modules),
        "options": options,
        "coverage": {
            "found": len(candidates),
            "audited": len(audited),
            "skipped": len(skipped),
            "by_module": dict(sorted(by_module.items())),
            "complex": sum(bool(r.get("complex")) for r in audited),
            "flag_variants": {
                "audited": sum(v == "audited" for _, _, v in flags),
                "skipped": sum(v != "audited" for _, _, v in flags),
            },
            "skip_reasons": dict(
                collections.Counter(_reason_kind(s["reason"]) for s in skipped).most_common()
            ),
        },
        "judged": dict(judged),
        "categories": dict(collections.Counter(f["category"] for f in findings)),
        "findings": findings,
        # failures the differences did not confirm at other step sizes: counted
        # inconclusive, listed so that they can be looked at, never a finding
        "unsettled": unsettled,
        "audited": [
            {
                k: r.get(k)
                for k in ("function", "domain", "complex", "variants", "counts", "seconds")
            }
            for r in audited
        ],
        "skipped": skipped,
    }


def _reason_kind(reason: str) -> str:
    """A skip reason's kind, for the counts: the text before its first parenthesis."""
    head = reason.split(" (")[0].split(":")[0]
    return head if len(head) < 60 else head[:57] + "..."
