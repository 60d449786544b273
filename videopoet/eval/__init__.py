"""Metrics (reconstruction, FVD/FAD/CLIPSIM, probes, drift) and reports."""
