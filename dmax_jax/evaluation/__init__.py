"""Benchmark evaluation (GSM8K, MATH500, HumanEval, MBPP, ...): scorers and the code-execution sandbox."""
