"""``shmkit bench``: run a benchmark module, with a progress bar, JSON and a chart.

``shmkit bench`` alone lists what it can run. ``shmkit bench NAME [options]``
runs ``NAME``'s module (its own options follow the name; ``--help`` lists
them); this front adds:

- a progress bar on stderr while it runs, only when stderr is a terminal;
- ``--json``: the tables as JSON on stdout (the tables themselves then go to
  stderr), with the exit status and the plotted values;
- ``--plot FILE.png``: one bar chart per printed table, bar heights taken
  from the very numbers the table printed (rate where every row has one,
  else the median time), read back from the drawn bars. Needs matplotlib
  (``pip install 'shmkit[plot]'``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from .common import print_json


def add_parser(sub: Any, benches: dict[str, str]) -> None:
    """Register ``bench`` over ``benches`` (name -> module with ``main(argv) -> int``)."""
    p = sub.add_parser(
        "bench",
        help="benchmarks against the peers (no name: list them)",
        description="Run a benchmark against its peers, with a progress bar, JSON and a chart.",
    )
    p.add_argument("which", nargs="?", choices=sorted(benches), help="the benchmark to run")
    p.add_argument("--json", action="store_true", help="print the tables as JSON on stdout")
    p.add_argument("--plot", metavar="FILE.png", help="draw the tables as bar charts")
    p.add_argument(
        "rest", nargs=argparse.REMAINDER, help="options for that benchmark (see NAME --help)"
    )
    p.set_defaults(func=cmd_bench, benches=benches)


def _split_front_options(rest: list[str]) -> tuple[list[str], bool, str | None]:
    """Take this front's ``--json`` and ``--plot FILE`` out of the module's options."""
    out: list[str] = []
    as_json, plot = False, None
    it = iter(rest)
    for arg in it:
        if arg == "--json":
            as_json = True
        elif arg == "--plot":
            plot = next(it, None)
            if plot is None:
                raise SystemExit("shmkit bench: error: --plot needs a file name")
        elif arg.startswith("--plot="):
            plot = arg.split("=", 1)[1]
        else:
            out.append(arg)
    return out, as_json, plot


def cmd_bench(args: argparse.Namespace, console: Console) -> int:
    """List the benchmarks, or run one (see the module docstring)."""
    benches: dict[str, str] = args.benches
    if args.which is None:
        return _list(benches, console, as_json=args.json)
    rest, as_json, plot = _split_front_options(args.rest)
    as_json = as_json or args.json
    plot = plot or args.plot
    if plot is not None:
        _need_matplotlib()
    from .._bench import common  # noqa: PLC0415 - the benchmarks load numpy and the peers

    module = importlib.import_module(benches[args.which])
    common.RECORDED.clear()
    with contextlib.ExitStack() as stack:
        if as_json:  # the tables go to stderr, the JSON alone to stdout
            stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        if sys.stderr.isatty():
            stack.enter_context(_progress(args.which))
        status = int(module.main(rest))
    tables = list(common.RECORDED)
    plotted = plot_tables(tables, plot) if plot is not None and tables else []
    if plot is not None and not tables:
        print(f"shmkit bench: no table was printed, so {plot} was not written", file=sys.stderr)
        status = status or 1
    elif plot is not None and not as_json:
        console.print(f"chart of {len(plotted)} table(s) written to {plot}", highlight=False)
    if as_json:
        print_json(
            {
                "benchmark": args.which,
                "options": rest,
                "status": status,
                "environment": common.environment(),
                "tables": tables,
                "plot": {"file": plot, "tables": plotted} if plot is not None else None,
            }
        )
    return status


def _list(benches: dict[str, str], console: Console, *, as_json: bool) -> int:
    rows = []
    for name in sorted(benches):
        try:
            module = importlib.import_module(benches[name])
        except ImportError as exc:
            rows.append({"name": name, "about": f"unavailable: {exc}", "workloads": []})
            continue
        about = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""
        about = about.split(":", 1)[1].strip() if about.startswith("``") else about
        rows.append({"name": name, "about": about, "workloads": list(_workloads(module))})
    if as_json:
        print_json(rows)
        return 0
    console.print(
        "shmkit bench NAME [--json] [--plot FILE.png] [options]; NAME is one of:", markup=False
    )
    for row in rows:
        only = f" (--only {','.join(row['workloads'])})" if row["workloads"] else ""
        console.print(f"  {row['name']:<8} {row['about']}{only}", highlight=False)
    console.print("each takes --help for its own options; --quick for a short run")
    return 0


def _workloads(module: Any) -> list[str]:
    known = getattr(module, "WORKLOADS", None) or getattr(module, "TITLES", None) or ()
    return list(known)


@contextlib.contextmanager
def _progress(which: str) -> Iterator[None]:
    """A progress bar on stderr, advanced by the benchmark's ``step()`` calls."""
    from rich.progress import (  # noqa: PLC0415 - only on a terminal
        BarColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from .._bench import common  # noqa: PLC0415

    progress = Progress(
        SpinnerColumn(),
        TextColumn(f"bench {which}"),
        BarColumn(),
        TextColumn("{task.completed} rows done, now: {task.description}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = progress.add_task("starting", total=None)
    first = [True]

    def advance(label: str) -> None:
        progress.update(task, description=label, advance=0 if first[0] else 1)
        first[0] = False

    common.on_step(advance)
    try:
        with progress:
            yield
    finally:
        common.on_step(None)


def _need_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401, PLC0415
    except ImportError:
        raise SystemExit(
            "shmkit bench: error: --plot needs matplotlib: pip install 'shmkit[plot]'"
        ) from None


def plot_tables(tables: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    """Draw each table as horizontal bars into ``path``; return what was drawn.

    The returned values are read back from the drawn bars (their widths), so
    a test can compare the chart with the printed table.
    """
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    heights = [max(1.6, 0.32 * len(t["rows"]) + 1.0) for t in tables]
    fig, axes = plt.subplots(
        len(tables), 1, figsize=(10, sum(heights)), gridspec_kw={"height_ratios": heights}
    )
    axes = [axes] if len(tables) == 1 else list(axes)
    drawn = []
    for ax, table in zip(axes, tables, strict=True):
        rows = table["rows"]
        by_rate = all(r["rate"] > 0 for r in rows)
        key, unit = (
            ("rate", "per second (higher is better)")
            if by_rate
            else (
                "median_us",
                "median µs (lower is better)",
            )
        )
        labels = [_short(r["name"] + (f" ({r['note']})" if r["note"] else "")) for r in rows]
        colors = ["tab:orange" if r["name"] == table["baseline"] else "tab:blue" for r in rows]
        bars = ax.barh(range(len(rows)), [r[key] for r in rows], color=colors)
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(unit, fontsize=8)
        ax.set_title(_short(table["title"], 110), fontsize=8, loc="left")
        ax.bar_label(bars, fmt="{:,.2f}" if not by_rate else "{:,.0f}", fontsize=6, padding=2)
        drawn.append(
            {
                "title": table["title"],
                "metric": key,
                "labels": [r["name"] for r in rows],
                "values": [float(b.get_width()) for b in bars.patches],
            }
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # long row names stay whole
    plt.close(fig)
    return drawn


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
