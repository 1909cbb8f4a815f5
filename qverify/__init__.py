"""qverify: is the board's answer the quantized model's answer? Layer by layer.

    import qverify
    result = qverify.verify("quant.onnx,model.bin", board="192.168.1.10", dump_all=True)
    if not result.passed:
        print(result.first_divergent)
"""
from __future__ import annotations

from qverify._version import __version__


def verify(models, board=None, **options):
    """Run the same inputs on quant.onnx, the board and the simulator; see qverify.client.verify.verify."""
    # Imported here, not at the top: `import qverify` runs whenever any part is imported (boards
    # import qverify.agent, which must not pull in onnx), so this module imports nothing above it.
    from qverify.client.verify import verify as _verify

    return _verify(models, board, **options)


__all__ = ["__version__", "verify"]
