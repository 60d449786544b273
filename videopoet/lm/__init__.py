"""The multimodal prefix LM: vocabulary, sequence layout, transformer, attention, sampling.

    vocab.py       Vocabulary: special/task ids, visual, audio (per level) and text ranges; vocab.json
    sequence.py    build_sequence (task spec + inputs -> ids, prefix_len, loss_mask, modality, legal
                   ranges), parse_sequence / output_codes (the inverse), collate
    model.py       LMConfig, PrefixLM (RMSNorm, RoPE, SwiGLU, prefix-LM attention), KVCache,
                   prefix_lm_loss
    attention.py   the one attention function (sdpa / flex / xformers, chosen once)
    generate.py    make_prompt, generate (KV cache, constrained, guidance, top-k/top-p), sample_task
    fast_decode.py the one-token decoding step, shape-stable so torch.compile builds one graph
                   (used by generate when compile=True, or automatically when it pays off)
    pretrained.py  presets (configs/lm/*.yaml) and LM directories (config.json, model.safetensors,
                   vocab.json)
The task table itself is data in videopoet/lm/tasks.py.
"""
