"""Offline stand-ins for real T5 checkpoints, for tests and benchmarks: a SentencePiece model trained on the
spot (or the file named by $TINYTHINKER_VOCAB) and randomly initialised PyTorch T5 models saved in Hugging
Face format. Needs the test extras (torch, transformers).
"""

import os
import shutil

SENTENCES = (
    "question: which gas do plants take in to make food? answer: carbon dioxide",
    "the moon orbits the earth while the earth orbits the sun",
    "recall: water boils at one hundred degrees celsius at sea level",
    "analyze: option a is wrong because ice melts when it is warmed",
    "a magnet attracts iron nails but not wooden sticks",
    "the heart pumps blood through the arteries and veins of the body",
)
KINDS = ("t5_1_0", "t5_1_1")


def sentencepiece_model(directory: str) -> str:
    """Path of a SentencePiece model with T5's special ids (pad 0, eos 1, unk 2, no bos)."""
    if os.environ.get("TINYTHINKER_VOCAB"):
        return os.environ["TINYTHINKER_VOCAB"]
    import sentencepiece

    os.makedirs(directory, exist_ok=True)
    corpus = os.path.join(directory, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n".join(SENTENCES * 4))
    prefix = os.path.join(directory, "spiece")
    sentencepiece.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, vocab_size=96, hard_vocab_limit=False, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
    )
    return prefix + ".model"


def embedding_rows(vocab_path: str) -> int:
    """Enough rows for the pieces plus T5's 100 extra ids, rounded up to a multiple of 128 like t5's 32128."""
    import sentencepiece

    needed = sentencepiece.SentencePieceProcessor(model_file=vocab_path).get_piece_size() + 100
    return -(-needed // 128) * 128


def hf_config(kind: str, vocab_size: int, **overrides):
    """A tiny `transformers.T5Config` of T5 1.0 (ReLU, tied) or T5 1.1 (gated-GELU, untied) flavour."""
    import transformers

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    fields = dict(
        vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=20, decoder_start_token_id=0,
        feed_forward_proj="relu" if kind == "t5_1_0" else "gated-gelu", tie_word_embeddings=kind == "t5_1_0",
    )
    fields.update(overrides)
    return transformers.T5Config(**fields)


def random_hf_t5(kind: str, vocab_path: str, *, seed: int = 0, **config_overrides):
    """A randomly initialised `T5ForConditionalGeneration`, embedding sized for `vocab_path`."""
    import torch
    import transformers

    config_overrides.setdefault("vocab_size", embedding_rows(vocab_path))
    torch.manual_seed(seed)
    return transformers.T5ForConditionalGeneration(hf_config(kind, **config_overrides)).eval()


def save_hf_t5(model, directory: str, vocab_path: str) -> str:
    """`model` in Hugging Face format with its `spiece.model`, as the pretrained checkpoints ship."""
    model.save_pretrained(directory)
    shutil.copyfile(vocab_path, os.path.join(directory, "spiece.model"))
    return directory


def save_random_hf_t5(directory: str, kind: str, vocab_path: str, *, seed: int = 0, **config_overrides):
    model = random_hf_t5(kind, vocab_path, seed=seed, **config_overrides)
    save_hf_t5(model, directory, vocab_path)
    return model
