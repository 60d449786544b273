"""Task specs (prefix -> output), generation pipelines, long-video chaining."""
