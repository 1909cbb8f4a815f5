"""The farm with float models: an entry's ``float_model`` is verified as the golden reference, and
the quantization loss (float vs quant.onnx output cosine) is kept in the history and its reports."""
from __future__ import annotations

import sqlite3
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import qverify
from qverify.client.farm import history as farm_history
from qverify.client.farm.history import History
from qverify.client.farm.history_report import render_report, render_report_html, report_json
from qverify.client.farm.inventory import InventoryError, json_schema, load_inventory
from qverify.client.farm.outcomes import CONSISTENT, BoardStatus, FarmResult, JobResult
from qverify.client.farm.runner import FarmRun
from qverify.simulator.compiler import compile_model
from qverify.simulator.modelfile import save

T0 = datetime(2026, 11, 21, 2, 0, tzinfo=timezone.utc)


def night(n: int) -> str:
    return (T0 + timedelta(days=n)).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(n: int, *jobs: JobResult) -> FarmResult:
    return FarmResult(run_id=f"run{n}", inventory="farm.toml", started=night(n),
                      finished=night(n).replace("02:00", "02:30"), jobs=list(jobs),
                      boards=[BoardStatus("b1", address="10.0.0.1:7060")])


def job(float_cosine: float | None) -> JobResult:
    return JobResult("b1", "cls", CONSISTENT, min_exact_fraction=1.0, min_cosine=1.0, float_cosine=float_cosine)


@pytest.fixture(scope="module")
def cls(tmp_path_factory, quantized, float_model, model_feeds) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("farm_float")
    quant = quantized("ppocr_cls")
    save(compile_model(quant), folder / "model.bin")
    np.save(folder / "x.npy", model_feeds("ppocr_cls", 1)[0])
    return {"float": float_model("ppocr_cls"), "quant": quant, "bin": folder / "model.bin", "x": folder / "x.npy"}


def test_a_verified_entry_with_a_float_model_records_its_float_cosine(cls, tmp_path):
    """The runner's job figures come from a real verification with the float model on the embedded board."""
    result = qverify.verify([cls["float"], cls["quant"], cls["bin"]], inputs=[str(cls["x"])])
    job_result = JobResult("embedded", "cls", CONSISTENT)
    FarmRun._fill(job_result, result)
    assert job_result.float_cosine == pytest.approx(result.float_reference.output_cosine)
    assert 0.98 <= job_result.float_cosine <= 1.0
    assert "output cosine" in job_result.message and ": OK" in job_result.message
    with History(tmp_path / "h.sqlite3") as history:
        history.record(run(0, job_result))
        assert [row["float_cosine"] for row in history.trend()] == [pytest.approx(job_result.float_cosine)]


def test_the_history_shows_quantization_loss_and_flags_a_worse_requantization(tmp_path):
    with History(tmp_path / "h.sqlite3") as history:
        history.record(run(0, job(0.9971)))
        worse = run(1, job(0.9412))
        regressions = history.regressions(worse)
        assert [r.kind for r in regressions] == ["quantization_loss"]
        assert "0.99710 -> 0.94120" in regressions[0].message
        worse.regressions = regressions
        history.record(worse)
        pair = report_json(history, T0 - timedelta(days=1))["pairs"][0]
        assert (pair["float_cosine_first"], pair["float_cosine_last"]) == (0.9971, 0.9412)
        console = Console(record=True, width=200)
        render_report(history, T0 - timedelta(days=1), console)
        text = console.export_text()
        assert "float cosine" in text and "0.99710 -> 0.94120" in text
        page = render_report_html(history, T0 - timedelta(days=1))
        assert "<th>float cosine</th>" in page and "0.99710 -&gt; 0.94120" in page


def test_a_history_without_float_models_has_no_float_column(tmp_path):
    with History(tmp_path / "h.sqlite3") as history:
        history.record(run(0, job(None)))
        console = Console(record=True, width=200)
        render_report(history, T0 - timedelta(days=1), console)
        assert "float cosine" not in console.export_text()
        assert history.regressions(run(1, job(None))) == []


def test_a_version_1_history_gains_the_float_column(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    for statement in farm_history._SCHEMA:  # the schema before float models
        db.execute(statement.replace(", float_cosine REAL", ""))
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with History(path) as history:
        history.record(run(0, job(0.99)))
        assert history.trend()[0]["float_cosine"] == 0.99
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == farm_history.SCHEMA_VERSION


def test_the_inventory_takes_a_float_model_only_beside_onnx(cls, tmp_path):
    base = f"""
        [[boards]]
        name = "b1"
        host = "127.0.0.1"

        [[models]]
        name = "cls"
        bin = "{cls['bin']}"
        float_model = "{cls['float']}"
        """
    inv = tmp_path / "farm.toml"
    inv.write_text(textwrap.dedent(base))
    with pytest.raises(InventoryError, match="float_model: a float model is compared with the quant.onnx"):
        load_inventory(inv)
    inv.write_text(textwrap.dedent(base + f'onnx = "{cls["quant"]}"\nmin_float_cosine = 0.99\n'))
    model = load_inventory(inv).models[0]
    assert model.float_model == cls["float"] and model.min_float_cosine == 0.99
    assert '"float_model"' in json_schema()
