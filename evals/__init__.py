"""Evaluation harness: math/code/SciCode benchmarks, HF and vLLM backends, EM-INF switch, sandbox.

Entry point: ``emreason eval`` -> :func:`emreason.evals.cli.main`. See docs/evals.md.
"""
