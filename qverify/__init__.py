"""qverify: is the board's answer the quantized model's answer? Layer by layer."""
__version__ = "0.1.0"
