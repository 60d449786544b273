"""videopoet: an open, trainable implementation of the VideoPoet recipe.

Subpackages (the folders are the architecture, see DESIGN.md):
  data        media I/O, datasets, the shapes benchmark, token shards
  tokenizers  video (MAGVIT-v2 + LFQ), audio (EnCodec-style RVQ), text
  lm          vocabulary, sequence layout, prefix-LM transformer, sampling
  tasks       task specs and generation pipelines
  eval        metrics and reports
"""

__version__ = "0.1.0"

from videopoet.errors import VideoPoetError  # noqa: E402

__all__ = ["VideoPoetError", "__version__"]
