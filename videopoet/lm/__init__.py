"""The multimodal prefix LM: vocabulary, sequence layout, transformer, attention, sampling."""
