"""The isolation pass of quant.onnx vs a board: every board layer fed the reference's own input
tensors and held to its op's bound (docs/verdict.md), and how its outcome decides the pair.

:class:`~qverify.client.verify.Verification` runs it; what the pass needs of the verification
(progress, notes, the host cache, how a board's death is recorded) is given explicitly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from qverify.client.agent_client import AgentError
from qverify.client.results import (
    DECIDED_BY_ISOLATION, DECIDED_BY_OUTPUTS, FAILED, PASSED, PLAIN_LABEL, PairResult, TensorResult,
)
from qverify.client.sides import HostCache, SideOutput


@dataclass
class IsolationPass:
    program: object
    say: Callable[[str], None]
    notes: list[str]  # the result's notes: how the board was asked is worth telling
    host_cache: HostCache | None
    cache_key: tuple  # identifies quant.onnx's all-tensor runs of these inputs, shared across boards
    # The message for a board that died mid-run (its death recorded), or None: not the board's fault.
    death: Callable[[object, AgentError], str | None]

    def run(self, onnx_side, board_side, frames: list, broken: dict[str, str]):
        """Every frame: quant.onnx with every tensor, then every board layer fed its tensors.

        Returns the IsolationJudge, or None when the board cannot be asked (an older agent,
        the board died: then ``broken`` says why and names the layer it died in)."""
        from qverify.client.isolation import IsolationJudge, batches, feeds_from, plan_groups

        program = self.program
        if not board_side.can_isolate:
            self.notes.append(f"{board_side.label}: its agent does not isolate layers itself (no 'isolate' "
                              "capability); the model was rewired so each layer reads the reference's tensors "
                              "as inputs, and run whole")
        judge = IsolationJudge(program)
        limits = getattr(getattr(board_side.client, "agent_info", None), "limits", None)
        budget = [getattr(limits, "max_message_bytes", 0) or (64 << 20)]
        if not board_side.can_isolate:  # the feeds travel as the rewired program's inputs
            budget.append(getattr(limits, "max_input_bytes", 0) or (64 << 20))
        max_bytes = max(1 << 20, min(budget) // 4)
        for number, frame in enumerate(frames):
            self.say(f"isolation, frame {number + 1}/{len(frames)}: every layer of the board on "
                     f"{onnx_side.label}'s tensors")
            reference = self.reference_all(onnx_side, frame, number).tensors
            feeds = feeds_from(program, reference)
            groups = plan_groups(program, set(feeds))
            try:
                isolated = board_side.run_isolated(frame, batches(program, groups, feeds, max_bytes))
            except AgentError as exc:
                message = self.death(board_side, exc)
                if message is None:
                    raise
                broken[board_side.label] = message + " (in an isolated run)"
                broken[PLAIN_LABEL] = broken[board_side.label]
                return judge
            judge.add_frame(isolated.tensors, reference, groups)
        return judge

    def reference_all(self, onnx_side, frame, number: int) -> SideOutput:
        """quant.onnx with every tensor exposed, shared across boards when a host cache is given."""
        if self.host_cache is None:
            return onnx_side.run(frame, True, consistent=True)
        return self.host_cache.get((*self.cache_key, number),
                                   lambda: onnx_side.run(frame, True, consistent=True))


def decide(pair: PairResult, isolation, dead: str) -> None:
    """A tolerance pair: isolation decides when it ran; accumulated drift is then reported, not judged."""
    if isolation is None or dead:  # a board that died in isolation was judged there
        pair.decided_by = DECIDED_BY_ISOLATION if isolation is not None else DECIDED_BY_OUTPUTS
        return
    pair.decided_by = DECIDED_BY_ISOLATION
    pair.isolation = isolation.ordered
    first = isolation.first_wrong
    failing = [t for t in pair.outputs + pair.layers if not t.passed]
    if first is not None:
        pair.status, pair.first_divergent = FAILED, result_tensor(first, pair)
    elif pair.message:  # a missing output, a dead board: not drift
        return
    else:
        if failing:
            worst = failing[0]
            pair.drift = (f"accumulated drift, not judged: {len(failing)} tensor(s) beyond the output rules "
                          f"(first {worst.name}: {worst.reason}), while every layer is within its bound in "
                          "isolation")
        pair.status, pair.first_divergent = PASSED, None


def result_tensor(layer, pair: PairResult) -> TensorResult:
    """The entire-run figures of an isolated layer's tensor, or a row made from its isolated figures."""
    for t in pair.outputs + pair.layers:
        if t.name == layer.tensor:
            return TensorResult(**{**t.__dict__, "passed": False,
                                   "reason": f"{layer.reason} (entire run: {t.reason})"})
    return TensorResult(name=layer.tensor, kind="layer", index=layer.index, producer=layer.node,
                        op=layer.onnx_op, placement="cpu" if layer.kind == "cpu" else "npu", shape=[],
                        elements=layer.elements, scale=None, max_abs_diff=0.0, within_digits=0,
                        exact=layer.elements - layer.off_by_one - layer.beyond_one, off_by_one=layer.off_by_one,
                        beyond_one=layer.beyond_one, max_lsb=layer.max_lsb, cosine=layer.cosine, passed=False,
                        reason=layer.reason)
