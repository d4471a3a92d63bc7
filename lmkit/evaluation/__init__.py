"""Evaluation: metrics and evaluators behind ``lmkit evaluate``.

Pure computations (classification metrics, the ``--fail-if`` gate, report files) import no torch;
the evaluators (language modeling, classification, zero-shot choice, generation, the
lm-evaluation-harness adapter) share one batched scoring routine, ``scoring.score_spans``.
"""
