"""`tinythinker convert | score | generate`: model checkpoints in and out of Hugging Face format, and the
model run over JSONL files.

    tinythinker convert --from_hf DIR --to CKPT_DIR
    tinythinker convert --from_ckpt CKPT_DIR --to_hf DIR
    tinythinker score --checkpoint CKPT_DIR --data F.jsonl --out S.jsonl
    tinythinker generate --checkpoint CKPT_DIR --data F.jsonl --out G.jsonl [--temperature T --top_k K ...]

Every data line is a JSON object with "inputs" (and for score "targets"); output lines are the input
objects with the results added. Texts are tokenized with the checkpoint's own spiece.model, EOS appended.
"""

import argparse
import os
from typing import Any

from tinythinker_jax.commands import non_negative_float, non_negative_int, positive_int, probability
from tinythinker_jax.errors import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    convert = subparsers.add_parser("convert", help="convert between Hugging Face T5 directories and checkpoints")
    source = convert.add_mutually_exclusive_group(required=True)
    source.add_argument("--from_hf", metavar="DIR", help="HF T5 directory: config.json, weights, spiece.model")
    source.add_argument("--from_ckpt", metavar="CKPT_DIR", help="model checkpoint to export")
    convert.add_argument("--to", metavar="CKPT_DIR", help="checkpoint to write (with --from_hf)")
    convert.add_argument("--to_hf", metavar="DIR", help="HF directory to write (with --from_ckpt)")
    convert.set_defaults(func=convert_command)

    score = subparsers.add_parser("score", help="summed log-likelihood of each line's targets given its inputs")
    _add_run_arguments(score)
    score.add_argument("--max_target_length", type=positive_int, default=512)
    score.set_defaults(func=score_command)

    generate = subparsers.add_parser("generate", help="decode predictions for each line's inputs")
    _add_run_arguments(generate)
    generate.add_argument("--max_decode_length", type=positive_int, default=128)
    generate.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 decodes greedily")
    generate.add_argument("--top_k", type=non_negative_int, default=0,
                          help="sample among the k likeliest tokens; 0: all")
    generate.add_argument("--top_p", type=probability, default=1.0, help="nucleus sampling mass; 1: all")
    generate.add_argument("--num_decodes", type=positive_int, default=1, help="samples per input")
    generate.add_argument("--seed", type=int, default=0)
    generate.set_defaults(func=generate_command)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="CKPT_DIR")
    parser.add_argument("--data", required=True, metavar="F.jsonl")
    parser.add_argument("--out", required=True, metavar="OUT.jsonl")
    parser.add_argument("--batch_size", type=positive_int, default=32)
    parser.add_argument("--max_input_length", type=positive_int, default=512)
    parser.add_argument(
        "--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
        help="compute dtype; auto: bfloat16 on GPU/TPU, float32 on CPU",
    )


def convert_command(args: argparse.Namespace) -> int:
    from tinythinker_jax.data import locations
    from tinythinker_jax.models import hf_convert

    if args.from_hf:
        if not args.to or args.to_hf:
            raise UserError("--from_hf needs --to CKPT_DIR (and no --to_hf)")
        locations.require_local(args.to, "--to")
        config = hf_convert.import_hf(args.from_hf, args.to)
        print(f"wrote checkpoint {args.to} ({config.num_encoder_layers}+{config.num_decoder_layers} layers)")
    else:
        if not args.to_hf or args.to:
            raise UserError("--from_ckpt needs --to_hf DIR (and no --to)")
        locations.require_local(args.to_hf, "--to_hf")
        hf_convert.export_hf(args.from_ckpt, args.to_hf)
        print(f"wrote Hugging Face directory {args.to_hf}")
    return 0


def _tokenize(vocabulary, text: str, max_length: int, eos_id: int) -> list[int]:
    return list(vocabulary.encode(text))[: max_length - 1] + [eos_id]


def _load(args: argparse.Namespace):
    import jax

    from tinythinker_jax.models import checkpoints

    dtype = args.dtype
    if dtype == "auto":
        dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    vocabulary = checkpoints.load_vocabulary(args.checkpoint)  # first: it checks the config and the vocabulary
    return checkpoints.load_model(args.checkpoint, dtype=dtype), vocabulary


def _read_inputs(args: argparse.Namespace, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """The data lines, after refusing an output that is a URL or the data file itself."""
    from tinythinker_jax.data import locations, records

    locations.require_local(args.out, "--out")
    if os.path.exists(args.data) and os.path.exists(args.out) and os.path.samefile(args.data, args.out):
        raise UserError(f"--out {args.out} is the --data file; writing it would destroy the input")
    return records.read_json_objects(args.data, required)


def score_command(args: argparse.Namespace) -> int:
    from tinythinker_jax.data.records import write_jsonl
    from tinythinker_jax.models import scoring

    records = _read_inputs(args, ("inputs", "targets"))
    model, vocabulary = _load(args)
    eos_id = model.config.eos_id
    inputs = [_tokenize(vocabulary, r["inputs"], args.max_input_length, eos_id) for r in records]
    targets = [_tokenize(vocabulary, r["targets"], args.max_target_length, eos_id) for r in records]
    scores = scoring.score(model, inputs, targets, batch_size=args.batch_size, max_input_length=args.max_input_length,
                           max_target_length=args.max_target_length)
    write_jsonl(
        args.out,
        ({**r, "log_likelihood": float(s), "num_target_tokens": len(t)} for r, s, t in zip(records, scores, targets)),
    )
    print(f"scored {len(records)} examples into {args.out}")
    return 0


def generate_command(args: argparse.Namespace) -> int:
    from tinythinker_jax.data.records import write_jsonl
    from tinythinker_jax.models import decoding

    sampling = decoding.SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    records = _read_inputs(args, ("inputs",))
    model, vocabulary = _load(args)
    eos_id = model.config.eos_id
    inputs = [_tokenize(vocabulary, r["inputs"], args.max_input_length, eos_id) for r in records]
    result = decoding.generate(
        model, inputs, max_decode_length=args.max_decode_length, sampling=sampling, num_decodes=args.num_decodes,
        seed=args.seed, batch_size=args.batch_size, max_input_length=args.max_input_length,
    )

    def with_predictions(record: dict[str, Any], tokens, log_likelihoods) -> dict[str, Any]:
        predictions = [vocabulary.decode(decoding.until_eos(row.tolist(), eos_id)) for row in tokens]
        return {**record, "predictions": predictions, "log_likelihoods": [float(x) for x in log_likelihoods]}

    write_jsonl(args.out, map(with_predictions, records, result.tokens, result.log_likelihood))
    print(f"generated for {len(records)} examples into {args.out}")
    return 0
