"""Hardware-aware architecture search for the device student (Optuna NSGA-II, latency on the exported bundle).

* :mod:`.space` - the search space (depths, heads, width, FFN multiple, beam) and its sampling.
* :mod:`.search` - :func:`run_nas`: each candidate is distilled briefly from the teacher, exported
  as an ONNX Runtime int8 bundle variant and timed **on that runtime** at one thread (lean decoder
  step); objectives quality (validation Recall@10 / NDCG@10) and p99 latency, constraints on size and
  p99; the scalarised ``L_task + l1*latency + l2*energy + l3*memory`` (energy from a phone-tier CPU
  model) picks the device student among the feasible Pareto front. ``edge-gr nas`` writes the front
  (JSON + plot) and ``student.json``, which ``edge-gr build --student-config`` distils.

>>> from server.nas.space import SearchSpace
>>> SearchSpace().widths[:3]
(32, 48, 64)
"""

__all__ = ["space", "search"]
