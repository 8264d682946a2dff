"""The command-line tools (`dmax-decode`, `dmax-train`, `dmax-convert`; the root scripts `decode.py`, `train.py`,
`convert_weights.py` call the same `main`s) and their one error policy (`dmax_jax.cli.policy`)."""
