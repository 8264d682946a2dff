"""DMax in miniature: a synthetic arithmetic word-problem task, its tokenizer, a tiny LLaDA2-MoE config,
data writers and evaluation helpers (see docs/tiny_dmax.md)."""
