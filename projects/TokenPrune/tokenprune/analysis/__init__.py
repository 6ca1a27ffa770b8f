"""Measuring models: fvcore FLOP counting (:mod:`.flops`, :mod:`.flop_handles`,
:mod:`.flops_report`), the analytic cost model (:mod:`.cost`), timing (:mod:`.timing`),
memory (:mod:`.memory`, :mod:`.memory_probe`), the latency benchmark (:mod:`.benchmark`,
:mod:`.benchmark_report`) and the pictures of a prediction (:mod:`.drawing`)."""
from .cost import BackboneSpec, attention_groups, backbone_macs, block_cost, block_macs
from .flop_handles import EXTRA_HANDLES, split_operators
from .flops import FlopCounts, count_model_flops, flop_analysis, flops_table
from .timing import interleaved_times, paired_latency

__all__ = ["BackboneSpec", "attention_groups", "backbone_macs", "block_cost", "block_macs",
           "EXTRA_HANDLES", "split_operators", "FlopCounts", "count_model_flops",
           "flop_analysis", "flops_table", "interleaved_times", "paired_latency"]
