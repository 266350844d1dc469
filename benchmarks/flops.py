"""The project's FLOP count, PaLM's way: MFU in `train_step.py` and the rehearsal's projections both use it.

Training costs 6 FLOPs per weight per token the weight multiplies, plus 12 x heads x kv per query-key pair of
every attention layer (the score and value products; causal masks count in full). The decoder's
cross-attention keys and values multiply the input tokens; an untied embedding is a lookup, and the tied one
multiplies only as the logits layer. A forward pass is a third of training.
"""

import math


def parameter_groups(config) -> dict:
    """The parameter groups the count needs, from `config`'s abstract model (shapes only, no memory; in the
    unrolled layout whatever `config.scan_layers` is)."""
    import jax
    from flax import nnx

    from tinythinker_jax.models import t5

    params = nnx.to_pure_dict(nnx.state(t5.abstract_model(config.replace(scan_layers=False)), nnx.Param))
    count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))  # noqa: E731
    cross_key_value = sum(count(layer["encoder_decoder_attention"][name])
                          for layer in params["decoder"]["layers"].values() for name in ("key", "value"))
    lookup = 0 if config.tie_word_embeddings else count(params["token_embedder"])
    encoder, total = count(params["encoder"]), count(params)
    return {"encoder": encoder, "cross_key_value": cross_key_value,
            "on_targets": total - lookup - encoder - cross_key_value,  # the rest of the decoder, the logits layer
            "total": total, "num_heads": config.num_heads, "d_kv": config.d_kv,
            "encoder_layers": config.num_encoder_layers, "decoder_layers": config.num_decoder_layers}


def train_flops(groups: dict, input_length: float, target_length: float) -> float:
    """Training FLOPs of one example (forward and backward) with `groups` from `parameter_groups`."""
    weights = 6.0 * ((groups["encoder"] + groups["cross_key_value"]) * input_length
                     + groups["on_targets"] * target_length)
    attention = 12.0 * groups["num_heads"] * groups["d_kv"] * (
        groups["encoder_layers"] * input_length**2
        + groups["decoder_layers"] * (target_length**2 + target_length * input_length))
    return weights + attention
