"""Building blocks of the LLaDA2-MoE decoder: norms, rotary embeddings, attention, MLP and MoE."""
