"""``qverify farm run`` / ``qverify farm report`` against a farm of real boards on loopback.

The farm is four emulated boards (farm_harness); the models are a small quantized CNN and a
second one with another activation, so the matrix is boards x 2 models. Every test writes
its own inventory and history database into its temporary folder and runs the farm through
``qverify.client.cli.main`` (the exit code is the command's) or ``run_farm``.

What is checked: every pair consistent and stamped; a faulty board fails alone, at the
faulted layer, and is never retried; a board that is down is retried with backoff,
reported offline and leaves the others alone; regressions against the history (newly
inconsistent, latency up) for exactly the pairs that got worse; ``-j 1`` works boards one
after another. Labgrid places: test_farm_labgrid.py; inventory errors and the deploy
examples: test_farm_config.py.

Agents that no test restarts are shared by the module. Waits are bounded and processes
are stopped by PID; no test asserts how fast anything is.
"""
from __future__ import annotations

import json
import re
from urllib.parse import unquote

import qverify
from agent_harness import agent_pool, free_port, module_agent_pool  # noqa: F401 (fixtures)
from farm_harness import (HOSTS, Events, by_pair, farm_cli, flat, junit_suites, start_boards,  # noqa: F401
                          write_inventory, backoffs, farm, faulty, models, spy)  # (the last five: fixtures)
from qverify.client.farm.inventory import load_inventory
from qverify.client.farm.runner import run_farm


# ------------------------------------------------------------------------- 1. all good


def test_all_good_every_pair_consistent_stamped_and_reported(tmp_path, capsys, spy, farm, models):
    events, _ = spy
    inv = write_inventory(tmp_path / "farm.toml", [b.entry() for b in farm], models)
    out_json, out_junit, out_html = tmp_path / "farm.json", tmp_path / "farm.xml", tmp_path / "farm.html"
    code, out, err = farm_cli(capsys, "run", inv, "--db", tmp_path / "history.db", "--json", out_json,
                              "--junit", out_junit, "--html", out_html)
    assert code == 0, out + err
    assert "8 consistent, 0 inconsistent, 0 infrastructure errors, 0 regressions: exit 0" in flat(out)

    report = json.loads(out_json.read_text())
    assert report["schema"] == "qverify.farm/1" and report["exit_code"] == 0
    assert report["counts"] == {"consistent": 8, "inconsistent": 0, "infra": 0}
    assert report["qverify_version"] == qverify.__version__
    assert [(j["board"], j["model"]) for j in report["jobs"]] == [(b.name, m) for b in farm for m in models.names]
    statuses = {s["name"]: s for s in report["boards"]}
    for b in farm:
        status = statuses[b.name]
        assert status["online"] and status["error"] == "" and status["address"] == f"{b.host}:{b.port}"
        assert status["versions"]["agent"] == qverify.__version__ and status["versions"]["backend"] == "sim"
    for job in report["jobs"]:
        assert job["outcome"] == "consistent" and job["attempts"] == 1 and not job["skipped"], job["message"]
        assert job["first_divergent"] == "" and "PASSED" in job["message"]
        stamps, board = job["versions"], statuses[job["board"]]["versions"]
        assert stamps["backend"] == "sim" and stamps["target"] == "sim-a16"
        assert stamps["qverify"] == qverify.__version__
        # The agent's and runtime's versions are on every job (under whichever key, see
        # test_job_stamps_use_the_documented_version_keys).
        assert {board["agent"], board["runtime"]} <= set(stamps.values()), stamps
        assert job["model_sha256"]["bin"] == models.sha(job["model"], "bin")
        assert job["model_sha256"]["onnx"] == models.sha(job["model"], "onnx")
        assert job["latency"]["frames"] == 2 and job["latency"]["median_ms"] > 0
        assert job["report"]["pairs"], "the pair's full verify report is kept"

    suites = junit_suites(out_junit)
    assert list(suites) == [b.name for b in farm]  # a testsuite per board
    for board, cases in suites.items():
        assert [c.get("name") for c in cases] == models.names  # a testcase per model
        assert all(c.find("failure") is None and c.find("error") is None for c in cases)

    page = out_html.read_text()
    assert all(b.name in page for b in farm) and all(m in page for m in models.names)
    links = [href for href in re.findall(r'href="([^"]+)"', page) if ".pairs/" in href]
    assert len(links) == 8
    for href in links:
        pair_page = (out_html.parent / unquote(href)).read_text()
        assert "farm report" in pair_page

    assert events.max_busy() > 1, "boards run in parallel"


def test_job_stamps_use_the_documented_version_keys(tmp_path, farm, models):
    """JobResult.versions is documented (farm.outcomes) as agent, backend, runtime, driver, firmware,
    target -- the keys BoardStatus.versions and the reports (farm.reports.VERSION_KEYS) use."""
    inv = load_inventory(write_inventory(tmp_path / "farm.toml", [farm[0].entry()], models,
                                         defaults={"perf_frames": 0}, model_names=models.names[:1]))
    result = run_farm(inv)
    (job,) = result.jobs
    assert job.outcome == "consistent", job.message
    board = result.boards[0].versions
    for key in ("agent", "backend", "runtime", "driver", "firmware"):
        assert job.versions[key] == board[key], key
    assert job.versions["target"] == "sim-a16"


# ----------------------------------------------------------------------- 2. a faulty board


def test_a_faulty_board_is_inconsistent_alone_at_the_faulted_layer(tmp_path, capsys, farm, faulty, models):
    boards = [faulty.entry() if b.name == faulty.name else b.entry() for b in farm]
    inv = write_inventory(tmp_path / "farm.toml", boards, models)
    out_json, out_junit = tmp_path / "farm.json", tmp_path / "farm.xml"
    code, out, err = farm_cli(capsys, "run", inv, "--no-db", "--json", out_json, "--junit", out_junit)
    assert code == 1, out + err
    report = json.loads(out_json.read_text())
    assert report["counts"] == {"consistent": 6, "inconsistent": 2, "infra": 0}
    for (board, model), job in by_pair(report).items():
        if board == faulty.name:
            assert job["outcome"] == "inconsistent", job["message"]
            assert job["first_divergent"] == models.fault_node
            assert job["first_divergent_tensor"] == models.fault_tensor
            assert "FAILED" in job["message"] and job["attempts"] == 1
        else:
            assert job["outcome"] == "consistent", (board, model, job["message"])
    assert "2 inconsistent" in flat(out) and models.fault_node in out
    cases = junit_suites(out_junit)
    assert all(c.find("failure") is not None for c in cases[faulty.name])
    assert all(c.find("failure") is None for name, cs in cases.items() if name != faulty.name for c in cs)


# ------------------------------------------------------------------------ 3. a board down


def test_a_board_down_is_retried_reported_offline_and_leaves_the_others_alone(tmp_path, capsys, spy, farm, models,
                                                                            backoffs):
    events, _ = spy
    down_port = free_port()  # nothing listens there on 127.0.0.14
    boards = [b.entry() for b in farm[:3]] + [{"name": "board-14", "host": HOSTS["board-14"],
                                              "agent_port": down_port, "connect_timeout_s": 0.5}]
    inv = write_inventory(tmp_path / "farm.toml", boards, models, settings={"retries": 2, "backoff_s": 0.2})
    out_json = tmp_path / "farm.json"
    code, out, err = farm_cli(capsys, "run", inv, "--db", tmp_path / "history.db", "--json", out_json)
    assert code == 3, out + err  # the worst outcome
    report = json.loads(out_json.read_text())
    assert report["counts"] == {"consistent": 6, "inconsistent": 0, "infra": 2}
    statuses = {s["name"]: s for s in report["boards"]}
    offline = statuses["board-14"]
    assert not offline["online"]
    assert f"127.0.0.14:{down_port}" in offline["error"] and "after 3 attempts" in offline["error"]
    assert all(statuses[b.name]["online"] for b in farm[:3])
    for (board, model), job in by_pair(report).items():
        if board == "board-14":
            assert job["outcome"] == "infra" and job["skipped"] and "board offline" in job["message"]
        else:
            assert job["outcome"] == "consistent" and job["attempts"] == 1
    assert "board board-14 offline" in flat(out)
    assert backoffs == [0.2, 0.4]  # retried with exponential backoff before giving up


def test_pairs_of_an_offline_board_count_the_attempts_made(tmp_path, models):
    """The health check was tried retries + 1 times; its pairs' attempts should say so."""
    inv = load_inventory(write_inventory(
        tmp_path / "farm.toml", [{"name": "board-14", "host": HOSTS["board-14"], "agent_port": free_port(),
                                  "connect_timeout_s": 0.5}], models, settings={"retries": 1, "backoff_s": 0.05}))
    result = run_farm(inv)
    assert [j.outcome for j in result.jobs] == ["infra", "infra"]
    assert "after 2 attempts" in result.boards[0].error
    assert all(j.attempts == 2 for j in result.jobs)


def test_a_board_lost_after_its_health_check_is_retried_with_backoff_then_infra(tmp_path, agent_pool, farm, models,
                                                                                 backoffs):
    """The agent dies just before the job: the job is retried (infrastructure), then reported."""
    lost = start_boards(agent_pool, ["board-14"], tag="-lost")[0]
    inv = load_inventory(write_inventory(
        tmp_path / "farm.toml", [farm[0].entry(), lost.entry(connect_timeout_s=0.5)], models,
        settings={"retries": 2, "backoff_s": 0.2},
        matrix=[{"boards": {"name": "board-11"}, "models": {}},
                {"boards": {"name": "board-14"}, "models": {"name": "cnn-hswish"}}]))
    assert [(b.name, m.name) for b, m in inv.pairs()] == [("board-11", "cnn-hswish"), ("board-11", "cnn-silu"),
                                                          ("board-14", "cnn-hswish")]
    events = Events()
    events.hooks.append(lambda event, board, detail: lost.agent.kill()
                        if board == "board-14" and detail.startswith("running") else None)
    result = run_farm(inv, listener=events.listener())
    jobs = {(j.board, j.model): j for j in result.jobs}
    lost_job = jobs["board-14", "cnn-hswish"]
    assert lost_job.outcome == "infra" and not lost_job.skipped and lost_job.attempts == 3, lost_job.message
    assert backoffs[:2] == [0.2, 0.4]  # the backoff was waited, doubling
    assert jobs["board-11", "cnn-hswish"].outcome == jobs["board-11", "cnn-silu"].outcome == "consistent"
    assert result.exit_code == 3


# ---------------------------------------------------------- 4. inconsistent is never retried


def test_inconsistent_results_are_never_retried(tmp_path, faulty, models):
    inv = load_inventory(write_inventory(tmp_path / "farm.toml", [faulty.entry()], models,
                                         settings={"retries": 4, "backoff_s": 0.05}, defaults={"perf_frames": 0}))
    result = run_farm(inv)
    assert [(j.outcome, j.attempts) for j in result.jobs] == [("inconsistent", 1), ("inconsistent", 1)]
    assert result.exit_code == 1


def test_a_board_that_dies_mid_run_is_run_again_and_then_reported_as_gone(tmp_path, agent_pool, models):
    """Dying mid-run may be a crash or a network cut: the job runs again; a board that stays
    silent afterwards is an infrastructure error that says what happened first."""
    (board,) = start_boards(agent_pool, ["board-13"], "--fault", f"crash:{models.fault_tensor}", tag="-crash")
    inv = load_inventory(write_inventory(tmp_path / "farm.toml", [board.entry()], models,
                                         settings={"retries": 1, "backoff_s": 0.05}, defaults={"perf_frames": 0}))
    result = run_farm(inv)
    job = result.jobs[0]
    assert job.outcome == "infra" and job.attempts >= 2, job
    assert "stopped answering during a run and has not answered since" in job.message


# ------------------------------------------------------------------- 5. history, regressions


def test_regressions_are_flagged_for_exactly_the_pairs_that_got_worse(tmp_path, capsys, agent_pool, models):
    boards = start_boards(agent_pool, ["board-11", "board-12", "board-13"], tag="-hist")
    db = tmp_path / "history.db"
    settings = {"latency_regression_pct": 2000}  # 21x slower: far above a healthy board's jitter
    inv = write_inventory(tmp_path / "farm.toml", [b.entry() for b in boards], models, settings=settings,
                          defaults={"perf_frames": 3})
    code, out, err = farm_cli(capsys, "run", inv, "--db", db, "--json", tmp_path / "first.json")
    assert code == 0, out + err
    assert json.loads((tmp_path / "first.json").read_text())["regressions"] == []

    # The same boards, same addresses and ports: board-11 now 300 ms slower per run, board-12 broken.
    slowed, broken = boards[0], boards[1]
    for board, fault in ((slowed, "delay:300"), (broken, f"bitflip:{models.fault_tensor}")):
        board.agent.stop()
        board.agent = agent_pool.start("--fault", fault, host=board.host, port=board.port, name=f"{board.name}-2")
        assert board.agent.port == board.port
    second = tmp_path / "second.json"
    code, out, err = farm_cli(capsys, "run", inv, "--db", db, "--json", second)
    assert code == 1, out + err
    report = json.loads(second.read_text())
    flagged = {(r["board"], r["model"], r["kind"]) for r in report["regressions"]}
    first_run = json.loads((tmp_path / "first.json").read_text())["run_id"]
    assert flagged == {(slowed.name, m, "latency_up") for m in models.names} | \
                      {(broken.name, m, "newly_inconsistent") for m in models.names}, report["regressions"]
    assert all(r["previous_run"] == first_run for r in report["regressions"])
    for r in report["regressions"]:
        assert flat(f"regression {r['board']} / {r['model']}") in flat(out)
    assert "4 regressions" in flat(out)
    jobs = by_pair(report)
    assert all(jobs[slowed.name, m]["outcome"] == "consistent" for m in models.names)  # slower, still right

    code, out, err = farm_cli(capsys, "report", "--since", "1d", "--db", db, "--json")
    assert code == 0, err
    history = json.loads(out)
    assert [r["run_id"] for r in history["runs"]] == [first_run, report["run_id"]]
    assert {(r["board"], r["model"], r["kind"]) for r in history["regressions"]} == flagged
    code, out, err = farm_cli(capsys, "report", "--since", "1d", "--db", db)
    assert code == 0, err
    assert "newly_inconsistent" in out and "latency_up" in out


# ----------------------------------------------------------------------------- 8. -j 1


def test_one_job_at_a_time_works_boards_one_after_another(tmp_path, capsys, spy, farm, models):
    events, jobs = spy
    inv = write_inventory(tmp_path / "farm.toml", [b.entry() for b in farm], models, defaults={"perf_frames": 0})
    code, out, err = farm_cli(capsys, "run", inv, "-j", "1", "--no-db", "--json", tmp_path / "farm.json")
    assert code == 0, out + err
    assert jobs == [1]
    report = json.loads((tmp_path / "farm.json").read_text())
    assert report["counts"] == {"consistent": 8, "inconsistent": 0, "infra": 0}
    assert events.max_busy() == 1
    assert events.done_order() == [b.name for b in farm]
