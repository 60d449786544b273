"""Media I/O (PyAV, Pillow), datasets, clip sampling, the shapes benchmark, token shards."""
