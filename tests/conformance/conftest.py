"""Fixtures of the conformance tests: ONNX node-test data regenerated into a temporary folder."""
from __future__ import annotations

import pytest

import conformance_support as support
from conformance_support import FLOAT_OPS, INTEGER_OPS


@pytest.fixture(scope="session")
def integer_node_data(tmp_path_factory):
    """Folder of the generated node cases of QLinearConv, QLinearMatMul, MatMulInteger, ConvInteger."""
    return support.generate_node_data(support.node_testcases(INTEGER_OPS), tmp_path_factory.mktemp("onnx_int"))


@pytest.fixture(scope="session")
def float_node_data(tmp_path_factory):
    """Folder of the generated node cases of the float ops quantized in test_quantized_float_nodes."""
    return support.generate_node_data(support.node_testcases(FLOAT_OPS), tmp_path_factory.mktemp("onnx_float"))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Per-op table of the quantized float node tests: outcomes, and the fraction of output
    elements equal to onnxruntime's (the others are within 1 LSB unless the case failed), against
    its default optimized session and against its unoptimized run of the same QDQ graph."""
    stats = support.STATS
    if not stats:
        return
    tr = terminalreporter
    tr.section("conformance: quantized ONNX node tests, simulator vs onnxruntime")
    tr.write_line(f"{'op':<18} {'cases':>5} {'pass':>5} {'skip':>5} {'fail':>5} {'xfail':>5}  {'exact':>8}  "
                  f"{'max LSB':>7}  {'exact vs unoptimized ORT':>24}")
    keys = ("cases", "passed", "skipped", "failed", "xfailed", "exact", "elements", "exact_plain", "elements_plain")
    total = dict.fromkeys(keys, 0)
    total["max_diff"] = 0

    def line(name, s):
        exact = f"{s['exact'] / s['elements']:.2%}" if s["elements"] else "-"
        plain = f"{s['exact_plain'] / s['elements_plain']:.2%}" if s["elements_plain"] else "-"
        tr.write_line(f"{name:<18} {s['cases']:>5} {s['passed']:>5} {s['skipped']:>5} {s['failed']:>5} "
                      f"{s['xfailed']:>5}  {exact:>8}  {s['max_diff']:>7}  {plain:>24}")

    for op in sorted(stats):
        for key in keys:
            total[key] += stats[op][key]
        total["max_diff"] = max(total["max_diff"], stats[op]["max_diff"])
        line(op, stats[op])
    line("all", total)
