"""Model architectures the benchmarks build with random weights (latency only, never accuracy).

Shared by the CPU harness (``benchmarks/baselines.py``) and the self-contained GPU script
(``benchmarks/gpu_bench.py``, which loads this file by path). Needs only ``transformers``
(imported inside the functions): never imports ``alknet_firewall``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEBERTA_MAX_CONTENT", "DEBERTA_SIZES", "deberta_config", "smollm2_config"]

#: DeBERTa's position embeddings stop at 512: [CLS] + 510 content tokens + [SEP].
DEBERTA_MAX_CONTENT = 510

#: DeBERTa-v3 sizes (Prompt Guard 2 22M / ProtectAI v2 / LLM Guard use these architectures).
DEBERTA_SIZES: dict[str, dict[str, int]] = {
    "base": {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072},
    "xsmall": {"hidden_size": 384, "num_attention_heads": 6, "intermediate_size": 1536},
}


def deberta_config(size: str) -> Any:
    """DeBERTa-v3-{base,xsmall} architecture (as in the published configs)."""
    from transformers import DebertaV2Config

    return DebertaV2Config(
        vocab_size=128100,
        num_hidden_layers=12,
        max_position_embeddings=512,
        relative_attention=True,
        position_buckets=256,
        pos_att_type=["p2c", "c2p"],
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        position_biased_input=False,
        max_relative_positions=-1,
        type_vocab_size=0,
        hidden_act="gelu",
        layer_norm_eps=1e-7,
        num_labels=2,
        **DEBERTA_SIZES[size],
    )


def smollm2_config(layers: int = 8) -> Any:
    """SmolLM2-135M, truncated to its first ``layers`` layers (the codebook reads layer 8)."""
    from transformers import LlamaConfig

    kw: dict[str, Any] = {
        "vocab_size": 49152,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": layers,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
    }
    try:
        cfg = LlamaConfig(rope_theta=100000.0, **kw)
    except TypeError:  # a transformers version that only takes rope_parameters
        cfg = LlamaConfig(rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, **kw)
    return cfg
