"""``qverify farm run | check | schema | report``: parse and delegate."""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

farm_app = typer.Typer(help="Board-farm checks: every (board, model) pair, history and regressions.",
                       no_args_is_help=True)
_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)
COLOURS = {"consistent": "green", "inconsistent": "red", "infra": "yellow"}


class LiveProgress:
    """Which boards are busy and done/total: a live table on a terminal, one line per job elsewhere."""

    def __init__(self, boards: list[str], total: int) -> None:
        self.state = {b: "waiting" for b in boards}
        self.total, self.done = total, 0
        self.lock = threading.Lock()
        self.live = Live(self._table(), console=_err, refresh_per_second=4, transient=True) if _err.is_terminal else None

    def _table(self) -> Table:
        table = Table(title=f"farm: {self.done}/{self.total} jobs done", title_justify="left")
        table.add_column("board")
        table.add_column("state")
        for board, state in self.state.items():
            table.add_row(escape(board), escape(state))
        return table

    def __call__(self, event: str, board: str, detail: str) -> None:
        with self.lock:
            if event == "state":
                self.state[board] = detail
            else:
                self.done += 1
                if self.live is None:
                    _err.print(f"[dim]… [{self.done}/{self.total}] {escape(board)}: {escape(detail)}[/dim]")
            if self.live is not None:
                self.live.update(self._table())

    def __enter__(self) -> "LiveProgress":
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()


def print_farm(result) -> None:
    """One row per pair; figures are never cut, names give way, and narrow terminals get stacked rows."""
    from qverify.client.term_tables import rows_table

    rows = [[job.board, job.model, job.outcome, str(job.attempts), job.first_divergent,
             f"{job.latency.median_ms:.2f} ms" if job.latency else ""] for job in result.jobs]

    def stacked(i: int) -> list[str]:
        return [f"{rows[i][0]} / {rows[i][1]}",
                " · ".join(c for c in (rows[i][2], f"attempts {rows[i][3]}", rows[i][4], rows[i][5]) if c)]

    rows_table(_out, f"farm run {result.run_id}",
               ("board", "model", "outcome", "attempts", "first divergent layer", "latency median"), rows,
               names=(0, 1, 4), right=(3, 5), styles=[COLOURS[job.outcome] for job in result.jobs], stack=stacked)
    for job in result.jobs:  # free text wraps under the table instead of widening it
        if job.outcome == "infra" and job.message:
            _out.print(f"[yellow]{escape(job.board)} / {escape(job.model)}:[/yellow] {escape(job.message[:300])}")
    for board in result.boards:
        if not board.online:
            _out.print(f"[yellow]board {escape(board.name)} offline:[/yellow] {escape(board.error)}")
    for reg in result.regressions:
        _out.print(f"[red]regression[/red] {escape(reg.board)} / {escape(reg.model)}: {escape(reg.message)}")
    counts = result.counts()
    _out.print(f"{counts['consistent']} consistent, {counts['inconsistent']} inconsistent, {counts['infra']} "
               f"infrastructure errors, {len(result.regressions)} regressions: exit {result.exit_code}")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """CI runners and systemd stop jobs with SIGTERM: treat it like Ctrl-C, so running jobs
    end and every labgrid place is released before the process exits."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum, frame) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@farm_app.command("run")
def run_command(
    inventory: Path = typer.Argument(..., help="farm inventory (TOML), see deploy/farm/inventory.example.toml"),
    jobs: Optional[int] = typer.Option(None, "-j", "--jobs", min=1, help="boards worked on at once"),
    db: Optional[Path] = typer.Option(None, "--db", help="history database (default: the user's data dir)"),
    no_db: bool = typer.Option(False, "--no-db", help="do not record this run or look for regressions"),
    latency_pct: Optional[float] = typer.Option(None, "--latency-regression-pct",
                                                help="flag latency medians up more than this (default: inventory)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the JSON report"),
    junit_out: Optional[Path] = typer.Option(None, "--junit", help="write JUnit XML (a testsuite per board)"),
    html_out: Optional[Path] = typer.Option(None, "--html", help="write the HTML matrix with per-pair reports"),
    fail_on_regression: bool = typer.Option(False, "--fail-on-regression",
                                            help="exit 1 when a regression is flagged, even if every pair is "
                                                 "consistent (JUnit marks latency regressions as failures)"),
) -> None:
    """Run every (board, model) pair of the inventory; exit code = the worst outcome."""
    from qverify.client.errors import EXIT_BAD_INPUT, Failure
    from qverify.client.farm.inventory import load_inventory
    from qverify.client.farm.runner import run_farm

    for out in (json_out, junit_out, html_out):
        if out is not None and not out.parent.exists():
            raise Failure(f"report {out}: folder {out.parent} does not exist", EXIT_BAD_INPUT)
    inv = load_inventory(inventory)
    pairs = inv.pairs()
    boards = list(dict.fromkeys(b.name for b, _ in pairs))
    with LiveProgress(boards, len(pairs)) as progress, _sigterm_as_interrupt():
        result = run_farm(inv, jobs, progress)
    trend = None
    if not no_db:
        from qverify.client.farm.history import History, default_db_path

        with History(db or default_db_path()) as history:
            pct = latency_pct if latency_pct is not None else inv.settings.latency_regression_pct
            result.regressions = history.regressions(result, latency_pct=pct)
            history.record(result)
            trend = history.trend()
    if json_out or junit_out or html_out:
        from qverify.client.farm import reports as farm_reports

        if json_out:
            farm_reports.write_farm_json(result, json_out)
        if junit_out:
            farm_reports.write_farm_junit(result, junit_out)
        if html_out:
            farm_reports.write_farm_html(result, html_out, trend)
    print_farm(result)
    sys.stdout.flush()
    code = result.exit_code
    if fail_on_regression and result.regressions and code == 0:
        code = 1
    raise typer.Exit(code)


@farm_app.command("report")
def report_command(
    since: str = typer.Option("7d", "--since", help="period: 7d, 12h, 2w, or an ISO date"),
    db: Optional[Path] = typer.Option(None, "--db", help="history database (default: the user's data dir)"),
    json_out: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
    html_out: Optional[Path] = typer.Option(None, "--html", help="also write the report as an HTML page with "
                                                                  "trend plots"),
) -> None:
    """Trends and regressions of recorded farm runs."""
    import json

    from qverify.client.errors import EXIT_BAD_INPUT, Failure
    from qverify.client.farm.history import History, default_db_path, parse_since
    from qverify.client.farm.history_report import render_report, render_report_html, report_json

    try:
        start = parse_since(since)
    except ValueError as exc:
        raise Failure(f"--since {since}: {exc}", EXIT_BAD_INPUT) from None
    if html_out is not None and not html_out.absolute().parent.is_dir():
        raise Failure(f"--html {html_out}: folder {html_out.parent} does not exist", EXIT_BAD_INPUT)
    path = db or default_db_path()
    if not path.exists():
        raise Failure(f"no farm history at {path}; run 'qverify farm run' first (or give --db)", EXIT_BAD_INPUT)
    with History(path) as history:
        if html_out is not None:
            from qverify.client.dumpfiles import write_text_atomic

            write_text_atomic(html_out, render_report_html(history, start))
        if json_out:
            print(json.dumps(report_json(history, start), indent=2, default=str))
        else:
            render_report(history, start, _out)


@farm_app.command("check")
def check_command(
    inventory: Path = typer.Argument(..., help="farm inventory (TOML)"),
    json_out: bool = typer.Option(False, "--json", help="print the pairs as JSON"),
) -> None:
    """Validate the inventory (every error at once) and list the (board, model) pairs, without running."""
    from qverify.client.farm.inventory import load_inventory

    inv = load_inventory(inventory)
    pairs = inv.pairs()
    if json_out:
        import json

        print(json.dumps({"schema": "qverify.farm-check/1", "inventory": str(inv.path),
                          "pairs": [{"board": b.name, "model": m.name} for b, m in pairs]}, indent=2))
        return
    from qverify.client.term_tables import rows_table

    rows = [[board.name, f"{board.host}:{board.agent_port}" if board.host else f"labgrid place {board.place}",
             board.transport, model.name, model.bin.name] for board, model in pairs]
    rows_table(_out, f"{inventory}: {len(pairs)} pair{'s' * (len(pairs) != 1)}",
               ("board", "address", "transport", "model", "model.bin"), rows, names=(0, 1, 3, 4),
               stack=lambda i: [f"{rows[i][0]} / {rows[i][3]}", " · ".join((rows[i][1], rows[i][2], rows[i][4]))])
    unused = [b.name for b in inv.boards if all(b is not pb for pb, _ in pairs)]
    unused += [m.name for m in inv.models if all(m is not pm for _, pm in pairs)]
    if unused:
        _out.print(f"[yellow]not in any pair:[/yellow] {escape(', '.join(unused))}")
    _out.print(f"inventory OK: {len(inv.boards)} boards, {len(inv.models)} models, {len(pairs)} pairs")


@farm_app.command("schema")
def schema_command() -> None:
    """Print the inventory's JSON Schema (qverify farm schema > farm.schema.json), for editors."""
    from qverify.client.farm.inventory import json_schema

    sys.stdout.write(json_schema())
