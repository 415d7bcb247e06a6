"""What every benchmark script repeats: the machine and date header, JSON results, markdown
tables and timing. Scripts import it as ``from common import ...`` (they run from this folder's
parent as ``python benchmarks/<script>.py``, which puts this folder on ``sys.path``)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """The date, the command and what it ran on: CPU, cores, memory, software, JAX's backend."""
    cpu = platform.processor() or platform.machine()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        cpu = next(
            (ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")),
            cpu,
        )
    except OSError:
        pass
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem_gib = float("nan")
    versions = {"python": platform.python_version(), "jax": jax.__version__, "numpy": np.__version__}
    for name in ("jaxlib", "numpyro", "optax", "blackjax", "arviz"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    return {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python"] + sys.argv),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "x64": bool(jax.config.jax_enable_x64),
        "versions": versions,
        "env": {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "XLA_FLAGS") if k in os.environ},
    }


def machine_line(info: dict[str, Any]) -> str:
    """One markdown line for a :func:`machine` dict."""
    v = info["versions"]
    soft = ", ".join(f"{k} {v[k]}" for k in v)
    return (
        f"{info['date']}; {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; "
        f"JAX backend {info['backend']}; {soft}"
    )


def write_json(name: str, results: Any, path: str | os.PathLike | None = None) -> Path:
    """Write ``{"machine": machine(), "results": results}`` to ``path`` (default
    ``benchmarks/results/<name>.json``) and return the path."""
    path = Path(path) if path is not None else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), "results": results}
    path.write_text(json.dumps(payload, indent=1, sort_keys=True, default=_jsonable) + "\n")
    return path


def read_json(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """A file written by :func:`write_json`, by benchmark name or path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RESULTS / f"{name_or_path}.json"
    return json.loads(path.read_text())


def _jsonable(x):
    if isinstance(x, (np.generic, jax.Array)) and np.ndim(x) == 0:
        return np.asarray(x).item()
    if isinstance(x, (np.ndarray, jax.Array)):
        return np.asarray(x).tolist()
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A markdown table; cells are written with ``str`` (format numbers before). ``align`` has one
    letter a column, ``l`` or ``r`` (default: no alignment)."""
    rules = [{"l": ":---", "r": "---:"}.get(a, "---") for a in align.ljust(len(header))]
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join(rules) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> dict:
    """A table as stored in a results file: what ``render.py`` passes to :func:`markdown_table`."""
    return {"header": list(header), "rows": [list(map(str, r)) for r in rows], "align": align}


def int_list(text: str) -> list[int]:
    """``"1,2,3"`` → ``[1, 2, 3]`` (an argparse ``type``)."""
    return [int(v) for v in text.split(",") if v]


def str_list(text: str) -> list[str]:
    """``"a,b"`` → ``["a", "b"]``; the empty string gives ``[]`` (an argparse ``type``)."""
    return [v for v in text.split(",") if v]


def fmt_ms(x: float) -> str:
    """Milliseconds: two decimals below 100, none above."""
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def median_time(fn: Callable[[], Any], repeats: int = 30, warmup: int = 2) -> float:
    """Median wall time in seconds of ``fn()`` (its outputs blocked on), after ``warmup`` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def interleaved_times(calls: dict[str, tuple[Callable, tuple]], repeats: int) -> dict[str, float]:
    """Median seconds of each ``fn(*args)`` in ``calls`` over ``repeats`` rounds
    (:func:`budgeted_times` without a budget)."""
    return budgeted_times(calls, repeats)[0]


def budgeted_times(
    calls: dict[str, tuple[Callable, tuple]],
    rounds: int,
    budget_s: float = float("inf"),
    min_rounds: int = 1,
) -> tuple[dict[str, float], int]:
    """Median seconds of each ``fn(*args)`` in ``calls`` and the number of rounds timed.

    One untimed round first (it compiles what is not yet compiled); then the calls are timed in
    turn, round after round, so that load from other processes hits all alike: ``rounds`` rounds,
    or as many as fit in ``budget_s`` seconds judged by the first timed round, and at least
    ``min_rounds``."""
    for fn, args in calls.values():
        jax.block_until_ready(fn(*args))
    times: dict[str, list[float]] = {name: [] for name in calls}
    done, target = 0, 1
    while done < target:
        for name, (fn, args) in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
        done += 1
        if done == 1:
            first = sum(v[0] for v in times.values())
            target = int(min(rounds, max(min_rounds, budget_s // first if first > 0 else rounds)))
    return {name: float(np.median(v)) for name, v in times.items()}, done


def seed_summary(runs: Sequence[dict], metrics: Sequence[str]) -> dict[str, Any]:
    """One guide's runs over seeds (rows of ``posterior_accuracy.py``): the median of each metric
    over the runs that finished with it (None if none did) and ``"non_finite"``, the count of
    runs that stopped or ended non-finite, as ``"bad/total"``."""
    out: dict[str, Any] = {}
    for metric in metrics:
        ok = [r[metric] for r in runs if r.get(metric) is not None and r.get("error") is None]
        out[metric] = float(np.median(ok)) if ok else None
    bad = sum(bool(r.get("non_finite")) or r.get("error") is not None for r in runs)
    out["non_finite"] = f"{bad}/{len(runs)}"
    return out
