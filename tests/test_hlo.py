"""The HLO reader on a hand-written module: replica-group formats, loop trip counts, async halves, dots."""

import pytest

from dmax_jax import hlo

MODULE = """HloModule m

%cond (p: (s32[], f32[8])) -> pred[] {
  %p = (s32[], f32[8]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %c = s32[] constant(19)
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]{0}) parameter(0)
  %x = f32[8]{0} get-tuple-element(%p), index=1
  %ag = f32[32]{0} all-gather(%x), channel_id=1, replica_groups=[2,4]<=[8], dimensions={0}, metadata={op_name="layers/mlp/all_gather"}
  %rs = bf16[2]{0} reduce-scatter(%x), channel_id=2, replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}, dimensions={0}
  ROOT %t = (s32[], f32[8]{0}) tuple(%i, %x)
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %a = f32[8]{0} parameter(0)
  %w = (s32[], f32[8]{0}) while(%init), condition=%cond, body=%body
  %ar = f32[8]{0} all-reduce(%a), channel_id=3, replica_groups={{0,1},{2,3}}, to_apply=%add
  %ars = (f32[16]{0}, f32[16]{0}) all-reduce-start(%a), channel_id=4, replica_groups={{0,1}}
  %ard = f32[16]{0} all-reduce-done(%ars)
  %l = f32[4,5]{1,0} parameter(1)
  %r = f32[5,6]{1,0} parameter(2)
  ROOT %d = f32[4,6]{1,0} dot(%l, %r), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="head/dot_general"}
}
"""


def test_collectives_with_groups_trip_counts_and_wire_bytes():
  found = {c.text.split(" =")[0].lstrip("%"): c for c in hlo.parse(MODULE)}
  assert sorted(found) == ["ag", "ar", "ars", "rs"]  # the async -done half is not counted again
  ag, rs, ar, ars = found["ag"], found["rs"], found["ar"], found["ars"]
  assert (ag.kind, ag.result_bytes, ag.group_size, ag.trip_count, ag.op_name) == (
      "all-gather", 128, 4, 19, "layers/mlp/all_gather")
  assert ag.wire_bytes == pytest.approx(3 / 4 * 128)
  assert (rs.kind, rs.result_bytes, rs.group_size, rs.trip_count) == ("reduce-scatter", 4, 4, 19)
  assert rs.wire_bytes == pytest.approx(3 * 4)
  assert (ar.group_size, ar.trip_count, ar.wire_bytes) == (2, 1, pytest.approx(2 * 1 / 2 * 32))
  assert (ars.kind, ars.result_bytes) == ("all-reduce", 64)  # the output half of (operand, output)
  summary = hlo.summarize(hlo.parse(MODULE))
  assert summary["all-gather"]["count"] == 1 and summary["all-gather"]["count_per_call"] == 19
  assert summary["all-gather"]["result_bytes_per_call"] == 19 * 128


def test_dot_flops_per_op_name():
  assert hlo.dot_flops_by_op_name(MODULE) == {"head/dot_general": 2 * 4 * 6 * 5}
