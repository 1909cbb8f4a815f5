"""Accuracy debugging: where did the accuracy go between the float model, quant.onnx and the board?

- :mod:`.sensitivity` and :mod:`.curve`: which quantized nodes cost the accuracy
  (``qverify debug sensitivity``, ``qverify debug curve``);
- :mod:`.doctor`: the preprocessing mistakes that lose accuracy (``qverify doctor``);
- :mod:`.distributions`: per-layer histograms, per-channel ranges and saturation.
"""
