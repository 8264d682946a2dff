"""Small end-to-end experiments that run on a CPU (tiny models trained here, not downloaded)."""
