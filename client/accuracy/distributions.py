"""Per-layer value distributions: histograms, per-channel ranges, saturation and overflow counts.

:class:`DistributionCollector` takes a model's tensors frame by frame (a board's dumps, the
simulator's, onnxruntime's or the float model's) and keeps, per tensor, a bounded summary:

- **integer codes** (``scale`` given; int8, uint8, int16): one exact histogram over the codes
  (``np.bincount``), and per channel a 256-bin histogram over the codes (exact for 8-bit
  codes, 256 codes a bin for int16). Quartiles of 8-bit codes are exact (they equal
  ``np.percentile`` of the dequantized values); int32 codes are dequantized and summarised as
  floats.
- **floats**: 256 bins of equal width fixed by the first frame's range. A later value outside
  them doubles the width, merging bins in pairs, until the range covers it, so every count
  stays exact, only coarser. Channels share these edges; their quartiles are interpolated
  within a bin (within one bin width of the truth).

Minimum, maximum, mean and standard deviation (tensor and channels' min/max) are exact
either way. Nothing keeps a frame: the memory per tensor is bounded by its channel count
times 256 counters.

Saturation: the executor and the board count, per layer, outputs clamped to the int8 range
(:meth:`DistributionCollector.add_counts`). A layer whose zero point is its lowest code has a
ReLU folded into its range, and clamping negatives there is the activation, not a loss, so
then only clamps bounded by the values at the top code count. Without counts, the values at
the code limits (a limit at the zero point excepted) are what is reported.

:func:`weight_distributions` (in :mod:`~qverify.client.accuracy.weights`, re-exported here) gives
the same summaries for the weights of a quant.onnx (QDQ or QOperator) or a float model;
:func:`html_section` and :func:`terminal_columns` show them.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, fields

import numpy as np

from qverify.client.accuracy.distribution_html import html_section  # re-exported: the HTML fragment

__all__ = ["DistributionCollector", "LayerDistribution", "weight_distributions", "html_section", "terminal_columns",
           "SATURATION_FLAG", "SPREAD_FLAG", "CODE_USE_FLAG"]

SATURATION_FLAG = 0.01  # a layer saturating more than this fraction of its values is pointed out
SPREAD_FLAG = 10.0  # widest channel range / median channel range beyond this: per-channel or int16 candidate
CODE_USE_FLAG = 0.25  # int8 weights whose largest |code - zero point| is below this fraction of 127
BINS = 256  # float histogram bins and per-channel bins (bounded memory)


@dataclass
class LayerDistribution:
    """The value distribution of one tensor over the frames seen (or of one weight)."""
    name: str
    kind: str  # "activation" or "weight"
    elements: int  # values per frame (the largest frame's)
    histogram: list[int]
    bin_edges: list[float]  # len(histogram) + 1 edges, in real (dequantized) units
    min: float
    max: float
    mean: float
    std: float
    channel_min: list[float]
    channel_max: list[float]
    channel_p25: list[float]
    channel_median: list[float]
    channel_p75: list[float]
    saturated: int  # outputs clamped to the int8 range, as counted by the executor or the board
    acc_overflow: int  # int32 accumulator overflows, as counted
    saturation_fraction: float
    channel_spread: float  # widest channel range / median channel range (1.0 for one channel)
    flags: list[str] = field(default_factory=list)
    frames: int = 0
    values: int = 0  # values summarised: sum(histogram)
    at_limits: int = 0  # values at the lowest or highest code (a limit at the zero point excepted)
    nonfinite: int = 0  # NaN or infinite values (left out of the figures)
    scale: float | None = None
    zero_point: int | None = None
    tensor: str = ""  # for a weight: the initializer; else the tensor name

    def to_json(self) -> dict:
        """A JSON-ready dict (non-finite numbers as null)."""
        from qverify.client.reports import finite

        # What finite(asdict(self)) gives, without its deep copy and per-value recursion (most of a
        # farm job's report time): the fields hold numbers, strings, and flat lists of them.
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, list):
                out[f.name] = finite(value)
            elif f.name != "flags" and math.isfinite(sum(value)):  # a NaN or infinity anywhere makes the sum one
                out[f.name] = list(value)
            else:
                out[f.name] = [None if isinstance(v, float) and not math.isfinite(v) else v for v in value]
        return out


# ---------------------------------------------------------------- bounded histograms

class _CodeHist:
    """Exact histogram over integer codes; per channel 256 bins of ``1 << shift`` codes."""

    def __init__(self, dtype: np.dtype, channels: int) -> None:
        info = np.iinfo(dtype)
        self.offset, self.size = -int(info.min), int(info.max) - int(info.min) + 1
        self.qmin, self.qmax = int(info.min), int(info.max)
        self.shift = max(0, int(math.log2(self.size)) - 8)
        self.counts = np.zeros(self.size, np.int64)
        self.channel = np.zeros((channels, self.size >> self.shift), np.int64)

    def add(self, codes: np.ndarray) -> None:  # codes: (C, n) ints
        index = codes.astype(np.int64) + self.offset
        self.counts += np.bincount(index.ravel(), minlength=self.size)
        rows = (index >> self.shift) + (np.arange(codes.shape[0], dtype=np.int64) * self.channel.shape[1])[:, None]
        self.channel += np.bincount(rows.ravel(), minlength=self.channel.size).reshape(self.channel.shape)


class _FloatHist:
    """256 equal bins fixed by the first frame, doubled in width (pairs merged) to cover new values."""

    def __init__(self, channels: int) -> None:
        self.lo: float | None = None
        self.width = 0.0
        self.channel = np.zeros((channels, BINS), np.int64)

    def _cover(self, vmin: float, vmax: float) -> None:
        if self.lo is None:
            # A power-of-two width and an origin on its grid make every edge exact in float64, so a
            # value is binned the same way before and after any widening.
            span = vmax - vmin
            self.width = 2.0 ** math.ceil(math.log2(span / BINS)) if span > 0 else \
                2.0 ** (math.floor(math.log2(abs(vmin))) - 20 if vmin else -20)
            self.lo = math.floor(vmin / self.width) * self.width
        while vmin < self.lo or vmax >= self.lo + BINS * self.width:
            merged = self.channel.reshape(self.channel.shape[0], BINS // 2, 2).sum(axis=2)
            self.channel[:] = 0
            if vmin < self.lo:  # grow to the left: the old bins become the upper half
                self.lo -= BINS * self.width
                self.channel[:, BINS // 2:] = merged
            else:
                self.channel[:, :BINS // 2] = merged
            self.width *= 2

    def add(self, values: np.ndarray) -> None:  # values: (C, n) float64, NaN where not finite
        ok = ~np.isnan(values)
        if not ok.any():
            return
        self._cover(float(values[ok].min()), float(values[ok].max()))
        # Bin by the edges published in the summary (as np.histogram does), not by a division that may round.
        edges = self.lo + np.arange(BINS + 1) * self.width
        index = np.clip(np.searchsorted(edges, np.where(ok, values, self.lo), side="right") - 1, 0, BINS - 1)
        rows = index + (np.arange(values.shape[0], dtype=np.int64) * BINS)[:, None]
        self.channel += np.bincount(rows[ok], minlength=self.channel.size).reshape(self.channel.shape)


class _Tensor:
    """What the collector keeps for one tensor."""

    def __init__(self, name: str, kind: str) -> None:
        self.name, self.kind = name, kind
        self.hist: _CodeHist | _FloatHist | None = None
        self.scale: float | None = None
        self.zero_point = 0
        self.frames = self.elements = self.values = self.nonfinite = 0
        self.mean = self.m2 = 0.0  # running mean and sum of squared deviations (Chan et al.)
        self.cmin: np.ndarray | None = None
        self.cmax: np.ndarray | None = None
        self.saturated = self.acc_overflow = self.count_runs = self.count_elements = 0

    def merge_moments(self, n: int, mean: float, m2: float) -> None:
        total = self.values + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.values * n / total
        self.values = total


def _channels_first(values: np.ndarray, axis: int) -> np.ndarray:
    """(C, n) view: channel axis first, everything else flattened; no channel axis -> one channel."""
    if values.ndim == 0 or axis >= values.ndim or axis < -values.ndim:
        return values.reshape(1, -1)
    return np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)


class DistributionCollector:
    """Collects per-tensor distributions frame by frame, in bounded memory (see the module docstring)."""

    def __init__(self) -> None:
        self._tensors: dict[str, _Tensor] = {}

    def _entry(self, name: str, kind: str) -> _Tensor:
        if kind not in ("activation", "weight"):
            raise ValueError(f"kind must be 'activation' or 'weight', got {kind!r}")
        if name not in self._tensors:
            self._tensors[name] = _Tensor(name, kind)
        return self._tensors[name]

    def add(self, name: str, values: np.ndarray, *, scale: float | None = None, zero_point: int | None = None,
            kind: str = "activation", channel_axis: int = 1) -> None:
        """One frame of tensor ``name``: integer codes with their ``scale`` and ``zero_point``, or floats."""
        t = self._entry(name, kind)
        values = np.asarray(values)
        codes = scale is not None and values.dtype.kind in "iu" and values.dtype.itemsize <= 2
        if scale is not None and not codes:  # int32 codes (or floats given a scale): summarised as real values
            values = (values.astype(np.float64) - (zero_point or 0)) * float(scale)
        data = _channels_first(values, channel_axis)
        if t.hist is None:
            t.hist = _CodeHist(values.dtype, data.shape[0]) if codes else _FloatHist(data.shape[0])
            t.scale, t.zero_point = (float(scale), int(zero_point or 0)) if codes else (None, 0)
            t.cmin = np.full(data.shape[0], np.inf)
            t.cmax = np.full(data.shape[0], -np.inf)
        elif codes != isinstance(t.hist, _CodeHist) or data.shape[0] != t.cmin.shape[0] or (
                codes and (float(scale), int(zero_point or 0)) != (t.scale, t.zero_point)):
            raise ValueError(f"tensor '{name}' changed its kind of values, channel count or quantization "
                             "between frames; give each tensor one name per shape and quantization")
        t.frames += 1
        before = t.nonfinite
        t.elements = max(t.elements, int(values.size))
        if codes:
            t.hist.add(data)
            real = (data.astype(np.float64) - t.zero_point) * t.scale
        else:
            real = data.astype(np.float64)
            finite = np.isfinite(real)
            if not finite.all():  # NaN/inf are counted, then left out of every figure
                t.nonfinite += int(real.size - np.count_nonzero(finite))
                real = np.where(finite, real, np.nan)
            t.hist.add(real)
        # Codes and all-finite floats have no NaN: a flat view holds the same values in the same order.
        live = real.ravel() if codes or t.nonfinite == before else real[~np.isnan(real)]
        if live.size:
            mean = live.mean()
            t.merge_moments(int(live.size), float(mean), float(((live - mean) ** 2).sum()))
            with warnings.catch_warnings():  # an all-NaN channel keeps its running min/max
                warnings.simplefilter("ignore", RuntimeWarning)
                t.cmin = np.fmin(t.cmin, np.nanmin(real, axis=1))
                t.cmax = np.fmax(t.cmax, np.nanmax(real, axis=1))

    def add_counts(self, name: str, *, saturated: int, acc_overflow: int, elements: int | None = None) -> None:
        """One run's saturation and accumulator-overflow counts of layer ``name`` (the executor's LayerStats,
        or a board run's timing); ``elements`` is its output size, for a layer whose values are not added."""
        t = self._entry(name, self._tensors[name].kind if name in self._tensors else "activation")
        t.saturated += int(saturated)
        t.acc_overflow += int(acc_overflow)
        t.count_runs += 1
        t.count_elements += int(elements or 0)

    def summaries(self) -> list[LayerDistribution]:
        """Every tensor's summary, in the order the tensors were first added."""
        return [_summarise(t) for t in self._tensors.values()]


# ---------------------------------------------------------------- summaries and flags

def _pct(fraction: float) -> str:
    """3.1% / 0.0043%: enough digits that a small non-zero fraction does not read as 0."""
    p = fraction * 100
    return f"{p:.1f}%" if p >= 0.1 else f"{p:.2g}%"


def _quartiles(rows: np.ndarray, lo: float, width: float, exact: bool) -> list[list[float]]:
    """25th, 50th and 75th percentiles per channel from per-channel histograms (bin j: lo + j*width).

    ``exact``: every bin holds one value (an 8-bit code at lo + (j + 0.5)*width), so the order
    statistics are exact and the linear interpolation between them is np.percentile's.
    Otherwise the rank is interpolated within its bin. Vectorised over channels (a layer has
    hundreds): ``searchsorted(cum, r, side="right")`` is the count of ``cum <= r``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rows.shape[0] == 0:
        return [[], [], []]
    cum = np.cumsum(rows, axis=1)
    n = cum[:, -1]
    empty = n == 0
    last = rows.shape[1] - 1
    out: list[list[float]] = []
    for q in (0.25, 0.5, 0.75):
        p = q * (n - 1).astype(np.float64)
        if exact:
            i0 = np.floor(p)
            x0 = (cum <= i0[:, None]).sum(axis=1)
            x1 = (cum <= np.minimum(i0 + 1, n - 1)[:, None]).sum(axis=1)
            value = lo + (x0 + 0.5 + (p - i0) * (x1 - x0)) * width
        else:
            j = np.minimum((cum <= p[:, None]).sum(axis=1), last)
            before = np.where(j > 0, np.take_along_axis(cum, np.maximum(j - 1, 0)[:, None], axis=1)[:, 0], 0)
            count = np.take_along_axis(rows, j[:, None], axis=1)[:, 0]
            with np.errstate(divide="ignore", invalid="ignore"):
                value = lo + (j + (p - before + 0.5) / count) * width
        out.append(np.where(empty, np.nan, value).astype(np.float64).tolist())
    return out


def _spread(cmin: np.ndarray, cmax: np.ndarray) -> tuple[float, int | None, int | None]:
    """(widest channel range / median channel range, narrowest channel, widest channel); channels with
    no range at all (dead after a ReLU, constant) are left out."""
    ranges = cmax - cmin
    live = np.flatnonzero(np.isfinite(ranges) & (ranges > 0))
    if live.size < 2:
        return 1.0, None, None
    median = float(np.median(ranges[live]))
    narrow, wide = int(live[np.argmin(ranges[live])]), int(live[np.argmax(ranges[live])])
    return float(ranges[wide]) / median, narrow, wide


def _g(x: float) -> str:
    return f"{x:.2g}"


def _flags(d: LayerDistribution, counted: bool, narrow: int | None, wide: int | None, remedy: str) -> list[str]:
    flags = []
    if d.saturation_fraction > SATURATION_FLAG:
        what = "saturates" if counted else "has at the int8 limits"
        flags.append(f"{what} {_pct(d.saturation_fraction)} of its values: calibrate with more representative "
                     "data or keep it in int16")
    if d.channel_spread > SPREAD_FLAG and narrow is not None and wide is not None:
        flags.append(f"channel ranges span {d.channel_spread:.0f}x (channel {narrow}: {_g(d.channel_min[narrow])}.."
                     f"{_g(d.channel_max[narrow])}, channel {wide}: {_g(d.channel_min[wide])}..{_g(d.channel_max[wide])})"
                     f": {remedy}")
    if d.acc_overflow:
        flags.append(f"int32 accumulator overflowed {d.acc_overflow} times: its inputs or weights are too large for "
                     "int32 sums; rescale them (smaller input range) or run this layer on the CPU")
    if d.nonfinite:
        flags.append(f"{d.nonfinite} values are NaN or infinite: the model computes no number there")
    return flags


def _summarise(t: _Tensor, remedy: str = "a per-channel quantization or int16 candidate") -> LayerDistribution:
    nan = math.nan
    hist: list[int] = []
    edges: list[float] = []
    quart: list[list[float]] = [[], [], []]
    at_limits = 0
    if isinstance(t.hist, _CodeHist):
        h, scale, zp = t.hist, t.scale or 1.0, t.zero_point
        used = np.flatnonzero(h.counts)
        if used.size:
            first, last = int(used[0]), int(used[-1])
            group = max(1, math.ceil((last - first + 1) / BINS))  # whole codes per bin: exact rebinning
            pad = (-(last - first + 1)) % group
            hist = np.pad(h.counts[first:last + 1], (0, pad)).reshape(-1, group).sum(axis=1).tolist()
            code0 = first - h.offset
            edges = [(code0 - zp - 0.5 + j * group) * scale for j in range(len(hist) + 1)]
        at_limits = int(h.counts[h.qmax + h.offset]) + (int(h.counts[0]) if zp != h.qmin else 0)
        width = (1 << h.shift) * scale
        quart = _quartiles(h.channel, (-h.offset - zp - 0.5) * scale, width, exact=h.shift == 0)
    elif isinstance(t.hist, _FloatHist) and t.hist.lo is not None:
        totals = t.hist.channel.sum(axis=0)
        used = np.flatnonzero(totals)
        if used.size:
            first, last = int(used[0]), int(used[-1])
            hist = totals[first:last + 1].tolist()
            edges = [t.hist.lo + (first + j) * t.hist.width for j in range(len(hist) + 1)]
            quart = _quartiles(t.hist.channel, t.hist.lo, t.hist.width, exact=False)
    cmin = t.cmin if t.cmin is not None else np.zeros(0)
    cmax = t.cmax if t.cmax is not None else np.zeros(0)
    finite = np.isfinite(cmin)
    if quart[0]:  # an interpolated quartile never leaves its channel's range
        quart = [np.clip(np.asarray(q), np.where(finite, cmin, -np.inf), np.where(finite, cmax, np.inf)).tolist()
                 for q in quart]
    counted = t.count_runs > 0
    total = t.values if t.values else t.count_elements
    if t.kind == "weight":  # weights are not clamped at run time: their int8 use is judged apart
        lost = 0
    elif counted and isinstance(t.hist, _CodeHist) and t.zero_point == t.hist.qmin:
        # A ReLU folded into the range: clamps at the zero point are the activation; only top clamps count.
        lost = min(t.saturated, int(t.hist.counts[-1]))
    else:
        lost = t.saturated if counted else at_limits
    spread, narrow, wide = _spread(cmin, cmax)
    d = LayerDistribution(
        name=t.name, kind=t.kind, elements=t.elements, histogram=hist, bin_edges=edges,
        min=float(cmin[finite].min()) if finite.any() else nan, max=float(cmax[finite].max()) if finite.any() else nan,
        mean=t.mean if t.values else nan, std=math.sqrt(t.m2 / t.values) if t.values else nan,
        channel_min=[float(v) if math.isfinite(v) else nan for v in cmin],
        channel_max=[float(v) if math.isfinite(v) else nan for v in cmax],
        channel_p25=quart[0], channel_median=quart[1], channel_p75=quart[2],
        saturated=t.saturated, acc_overflow=t.acc_overflow, saturation_fraction=min(lost, total) / total if total else 0.0,
        channel_spread=spread, frames=t.frames, values=t.values, at_limits=at_limits, nonfinite=t.nonfinite,
        scale=t.scale, zero_point=t.zero_point if t.scale is not None else None, tensor=t.name)
    d.flags = _flags(d, counted, narrow, wide, remedy)
    return d


def terminal_columns(dist: LayerDistribution) -> dict[str, str]:
    """The layer's non-zero terminal columns: {"sat": "3.1%", "ovf": "12"}; {} for a clean layer."""
    cols = {}
    if dist.saturation_fraction > 0:
        cols["sat"] = _pct(dist.saturation_fraction)
    if dist.acc_overflow:
        cols["ovf"] = str(dist.acc_overflow)
    return cols


def __getattr__(name: str):
    """``weight_distributions`` lives in :mod:`~qverify.client.accuracy.weights` (which builds on this
    module); re-exported here lazily so that either module can be imported first."""
    if name == "weight_distributions":
        from qverify.client.accuracy.weights import weight_distributions

        return weight_distributions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
