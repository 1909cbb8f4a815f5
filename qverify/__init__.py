"""qverify: is the board's answer the quantized model's answer? Layer by layer.

    import qverify
    result = qverify.verify("quant.onnx,model.bin", board="192.168.1.10", dump_all=True)
    if not result.passed:
        print(result.first_divergent)
"""
from __future__ import annotations

__version__ = "0.1.0"


def verify(models, board=None, **options):
    """Run the same inputs on quant.onnx, the board and the simulator; see qverify.client.verify.verify."""
    # Imported here so that `import qverify` stays light: boards import qverify.agent, never onnx.
    from qverify.client.verify import verify as _verify

    return _verify(models, board, **options)


__all__ = ["__version__", "verify"]
