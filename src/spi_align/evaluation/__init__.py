"""Evaluation of finished runs: the pairwise LLM judge and the AlpacaEval export."""
