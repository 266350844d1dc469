"""`tinythinker teacher estimate|run|export-batch|import-batch`: three-stage rationales from a teacher LLM.

Any OpenAI-compatible server works (OpenAI, vLLM, Ollama, llama.cpp): `--base_url` and `--model`
pick it; the API key comes only from the environment variable named by `--api_key_env`.
`--prompt_mode paper` sends the official TinyThinker request instead of the project's own.
"""

import argparse
import json
import os

from tinythinker_jax.commands import fraction, non_negative_float, non_negative_int, positive_int
from tinythinker_jax.data.benchmarks import BENCHMARKS
from tinythinker_jax.errors import UserError
from tinythinker_jax.teacher.client import MAX_CONSECUTIVE_FAILURES

MIN_RECORDS_SHARE = 0.9


def _system_message(args, loaded) -> str:
    """The system message of the prompt mode: the paper's needs the official request and exemplar files."""
    from tinythinker_jax.teacher import paper, prompts

    if args.prompt_mode == prompts.PAPER:
        if not (args.request_file and args.exemplars):
            raise UserError("--prompt_mode paper needs --request_file (the official request.json) and "
                            "--exemplars (the official <dataset>_cot.json)")
        return paper.system_message(paper.load_instruction(args.request_file), loaded, args.prompt_seed,
                                    args.k_exemplars)
    if args.request_file:
        raise UserError("--request_file is for --prompt_mode paper")
    return prompts.system_message(loaded[:args.k_exemplars])


class _Job:
    """What every subcommand needs: the questions, the sampling settings, the prompt and the paths."""

    def __init__(self, args):
        from tinythinker_jax.data import locations, records
        from tinythinker_jax.teacher import exemplars, pricing, prompts, selection

        self.args = args
        self.questions = records.read_questions(locations.split_path(args.split_dir, args.split))
        exemplar_file = args.exemplars or exemplars.shipped_exemplars_path(args.dataset)
        loaded = exemplars.load_exemplars(exemplar_file)
        if args.k_exemplars is not None and args.k_exemplars > len(loaded):
            raise UserError(f"--k_exemplars {args.k_exemplars}: {exemplar_file} holds only {len(loaded)} exemplars")
        self.system = _system_message(args, loaded)
        self.exemplars = loaded[:args.k_exemplars]  # the estimate's reply lengths
        samples = args.samples or prompts.DEFAULT_SAMPLES.get(args.dataset, prompts.DEFAULT_SAMPLES_OTHERWISE)
        request_samples = args.request_samples or samples
        self.sampling = prompts.TeacherSampling(
            model=args.model, temperature=args.temperature, max_tokens=args.max_tokens, samples=samples,
            choices_per_request=args.choices_per_request or request_samples, rounds=args.rounds, seed=args.seed,
            temperature_step=args.temperature_step, prompt_mode=args.prompt_mode, request_samples=request_samples,
            paper_retry=args.paper_retry,
        )
        self.options = selection.Selection(
            relabel_by_teacher_vote=args.relabel_by_teacher_vote, diversity_pick=args.diversity_pick)
        self.prices = tuple(args.price) if args.price else pricing.PRICES_PER_MILLION.get(args.model)
        self.out_dir = args.out_dir or os.path.dirname(locations.teacher_path(args.split_dir))
        self.cache_path = args.cache or os.path.join(self.out_dir, "cache", "responses.jsonl")
        locations.require_local(self.out_dir, "--out_dir")  # written with Python's file API
        locations.require_local(self.cache_path, "--cache")

    def cache(self):
        from tinythinker_jax.teacher.cache import ResponseCache

        return ResponseCache(self.cache_path)

    def report_path(self) -> str:
        return os.path.join(self.out_dir, f"{self.args.split}_report.json")

    def write_outcome(self, outcome, failure=None) -> None:
        """Writes the report, and the records unless the run fell short (`failure` says why): a short run
        leaves the records file as it was, so nothing downstream trains on a fraction of the data."""
        from tinythinker_jax.data.records import teacher_record_to_json, write_json, write_jsonl
        from tinythinker_jax.teacher import prompts

        split = self.args.split
        if failure is None:
            write_jsonl(os.path.join(self.out_dir, f"{split}.jsonl"), map(teacher_record_to_json, outcome.records))
        report = {"dataset": self.args.dataset, "split": split, "base_url": self.args.base_url, **outcome.report,
                  "failure": failure}
        if self.sampling.prompt_mode == prompts.PAPER:
            report["prompt_seed"] = self.args.prompt_seed
        write_json(self.report_path(), report)
        r = outcome.report
        print(f"{r['records']}/{r['questions']} questions with samples ({r['samples_kept']} kept), "
              f"{len(r['failed_questions'])} failed, {len(r['short_questions'])} short, "
              f"{r['relabelled']} relabelled; "
              f"{r['requests']['pending']} requests pending -> {self.out_dir}")


def _print_estimate(job) -> int:
    from tinythinker_jax.teacher.estimate import estimate

    with job.cache() as cache:
        print(json.dumps(estimate(job.questions, job.sampling, job.system, job.exemplars, cache, job.prices), indent=2))
    return 0


def _estimate(args) -> int:
    return _print_estimate(_Job(args))


def _run(args) -> int:
    from tinythinker_jax.teacher import client, generation

    job = _Job(args)
    if args.dry_run:
        return _print_estimate(job)
    settings = client.ClientSettings(
        base_url=args.base_url, api_key_env=args.api_key_env, concurrency=args.concurrency,
        requests_per_minute=args.rpm, tokens_per_minute=args.tpm, max_retries=args.max_retries,
        backoff_base=args.backoff_base, backoff_max=args.backoff_max, request_timeout=args.request_timeout,
        max_consecutive_failures=args.max_consecutive_failures,
    )
    client.api_key(settings)  # a missing key stops here, before anything is sent

    with job.cache() as cache:
        def send(requests):
            return client.send_requests(requests, cache, settings, job.sampling.model, progress=args.progress)

        outcome = generation.generate(job.questions, job.sampling, job.system, cache, send, job.prices, job.options)
    failure = generation.shortfall(outcome.report, args.min_records_share)
    job.write_outcome(outcome, failure)
    if failure:
        records = os.path.join(job.out_dir, f"{args.split}.jsonl")
        raise UserError(f"teacher run: {failure}. Report: {job.report_path()}; {records} not written; every "
                        f"answer is cached in {job.cache_path}, so a re-run sends only what is missing")
    return 0


def _export_batch(args) -> int:
    from tinythinker_jax.teacher import batch, generation

    job = _Job(args)
    with job.cache() as cache:
        outcome = generation.generate(job.questions, job.sampling, job.system, cache, None, job.prices, job.options)
    path = args.batch_file or os.path.join(job.out_dir, "batch", f"{args.split}_input.jsonl")
    if not outcome.pending:
        print("nothing to export: every planned request is answered; run import-batch to write the records")
        return 0
    batch.export_batch(path, outcome.pending)
    print(f"{len(outcome.pending)} requests (round {outcome.report['rounds']}) -> {path}")
    return 0


def _import_batch(args) -> int:
    from tinythinker_jax.teacher import batch, generation

    job = _Job(args)
    with job.cache() as cache:
        counts = batch.import_batch(args.batch_output, cache)
        print(f"imported {counts['imported']}, already cached {counts['already_cached']}, "
              f"failed {counts['failed']} {counts['errors'] or ''}".rstrip())
        outcome = generation.generate(job.questions, job.sampling, job.system, cache, None, job.prices, job.options)
    job.write_outcome(outcome)
    if outcome.pending:
        print("run export-batch again for the requests still unanswered (a retry round or failed results)")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=sorted(BENCHMARKS),
                        help="picks the shipped exemplars and the default --samples")
    parser.add_argument("--split_dir", required=True,
                        help="directory with {train,validation,test}.jsonl question records")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out_dir", help="where <split>.jsonl and <split>_report.json go (default: SPLIT_DIR/teacher)")
    parser.add_argument("--cache", help="the response cache JSONL (default: OUT_DIR/cache/responses.jsonl)")
    parser.add_argument("--base_url",
                        help="an OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (default: OpenAI)")
    parser.add_argument("--model", default="gpt-4o-2024-05-13")
    parser.add_argument("--samples", type=positive_int,
                        help="valid samples wanted per question (default: 8 for csqa and toyworld, else 4)")
    parser.add_argument("--choices_per_request", type=positive_int,
                        help="the `n` of one request (default: --samples); 1 for servers that ignore `n`")
    parser.add_argument("--exemplars", help="exemplar JSON file (default: the shipped one for --dataset)")
    parser.add_argument("--k_exemplars", type=non_negative_int, default=None,
                        help="use the first k exemplars, or in paper mode k drawn at random (default: all)")
    parser.add_argument("--temperature", type=non_negative_float, default=0.8)
    parser.add_argument("--temperature_step", type=non_negative_float, default=0.1, help="added per retry round")
    parser.add_argument("--max_tokens", type=positive_int, default=256)
    parser.add_argument("--rounds", type=positive_int, default=3,
                        help="the first round plus retry rounds for short questions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--price", type=non_negative_float, nargs=2, metavar=("INPUT", "OUTPUT"),
                        help="USD per million tokens, overriding the table in tinythinker_jax/teacher/pricing.py")
    parser.add_argument("--request_samples", type=positive_int,
                        help="samples asked per question in the first round (default: --samples); more than "
                             "--samples leaves the choice of which to keep to arrival order or --diversity_pick")
    paper = parser.add_argument_group("the official TinyThinker teacher request and post-processing")
    paper.add_argument("--prompt_mode", choices=("project", "paper"), default="project",
                       help="paper: the official notebook's system and user messages and request fields")
    paper.add_argument("--request_file", help="paper mode: the official request.json (its instruction)")
    paper.add_argument("--prompt_seed", type=int, default=0,
                       help="paper mode: seeds the draw of the exemplars' order (and of --k_exemplars of them)")
    paper.add_argument("--paper_retry", action="store_true",
                       help="retry rounds ask for as many samples as failed, at the same temperature, with "
                            "max_tokens doubled after a truncated sample")
    paper.add_argument("--relabel_by_teacher_vote", action="store_true",
                       help="a question's label becomes the teacher's most frequent answer (changes training labels)")
    paper.add_argument("--diversity_pick", action="store_true",
                       help="keep first the samples whose key information is >10 edits from every other's")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    teacher = subparsers.add_parser("teacher", help="generate teacher rationales with an OpenAI-compatible LLM")
    commands = teacher.add_subparsers(dest="teacher_command", required=True)

    estimate = commands.add_parser("estimate", help="request count, tokens and cost of the first round; sends nothing")
    _common(estimate)
    estimate.set_defaults(func=_estimate)

    run = commands.add_parser("run", help="send the requests (resumable), filter, retry, write records and report")
    _common(run)
    run.add_argument("--dry_run", action="store_true", help="print the estimate instead of sending")
    run.add_argument("--api_key_env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    run.add_argument("--concurrency", type=positive_int, default=8)
    run.add_argument("--rpm", type=positive_int, help="requests-per-minute limit")
    run.add_argument("--tpm", type=positive_int, help="tokens-per-minute limit (prompt plus max_tokens x n)")
    run.add_argument("--max_retries", type=non_negative_int, default=6)
    run.add_argument("--backoff_base", type=non_negative_float, default=1.0,
                     help="seconds before the first retry, doubled after")
    run.add_argument("--backoff_max", type=non_negative_float, default=60.0)
    run.add_argument("--request_timeout", type=non_negative_float, default=120.0,
                     help="deadline of one attempt, in seconds")
    run.add_argument("--max_consecutive_failures", type=positive_int, default=MAX_CONSECUTIVE_FAILURES,
                     help="stop the run after this many requests in a row failed (after their retries) with no "
                          "answer in between; a 401, 403 or 404 stops it at once")
    run.add_argument("--min_records_share", type=fraction, default=MIN_RECORDS_SHARE,
                     help="exit with an error, writing the report but not the records, when fewer than this share "
                          "of the questions got teacher records (or none did)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar (default: only on a terminal)")
    run.set_defaults(func=_run)

    export = commands.add_parser("export-batch", help="write the unanswered requests as an OpenAI Batch API input file")
    _common(export)
    export.add_argument("--batch_file", help="default: OUT_DIR/batch/<split>_input.jsonl")
    export.set_defaults(func=_export_batch)

    imp = commands.add_parser("import-batch", help="store a Batch API output file, then write records and report")
    _common(imp)
    imp.add_argument("--batch_output", required=True, help="the batch's output JSONL")
    imp.set_defaults(func=_import_batch)
