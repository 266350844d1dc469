"""A rehearsal of the whole real-data workflow on CommonsenseQA, offline: what every phase costs on this
machine, and what the paper's full pipeline would cost, projected from the measured rates.

    TINYTHINKER_DATA_DIR=/path/to/data python benchmarks/rehearsal.py --out DIR [--model t5_1_0_tiny] \
        [--train_questions N] [--validation_questions N] [--test_questions N] [--sft_steps N] ...

With the defaults it is the full-size run: the real CSQA splits (8,520 train, 1,221 validation, 1,221 test),
teacher records for every training question, phase 1 for `--sft_steps` steps, one self-reflection
iteration over every training question and the test evaluation. Every phase runs as the user runs it, as
a `tinythinker` command in its own process, from the repository root:

1. `split`: `tinythinker data split` (splits, manifest, TFDS build) from `$TINYTHINKER_DATA_DIR/csqa`.
2. `teacher`: `tinythinker teacher run --prompt_mode paper` (the official request and exemplars) against
   the project's scripted OpenAI-compatible server (`teacher.fake_server.ScriptedServer` with
   `paper_length_reply`, on 127.0.0.1 in this process): 8 samples per question whose key information and
   explanations have the official exemplars' word counts, so summarize inputs reach 190-280 tokens.
   `--train_questions N` asks for the first N training questions only: phase 1 trains on their records and
   phase 2 samples them (it samples the training questions that have teacher records).
3. `phase1`: `tinythinker train` (gin/runs/pipeline.gin, the csqa experiment gin and the `--model` gin) for
   `--sft_steps` steps with blocks of `--sft_interval` steps, validation at the end only.
4. `reflect`: `tinythinker reflect`, iteration 1: `--num_samples` (10) chains per training question, pair
   building, reference scoring, DPO for `--rounds` rounds (10, the paper's) with validation after each.
5. `test`: `tinythinker pipeline --gin.ITERATIONS=1`, which finds phase 1 and the iteration done, evaluates
   both best models on the test split and writes the run's `report.md`.

Per phase: wall time, peak RSS of its process (`os.wait4`'s rusage; the teacher server runs in this
process and is not counted), examples, chains or pairs per second; the `data_stats.json` of phase 1 and of
the iteration's pair streams, whose cut counts must be 0 (the script exits 1 otherwise); and a projection
of the paper's pipeline (phase 1: 10 epochs at batch 64; 5 iterations; test evaluation of every phase) for
t5-small, base and large on this machine and on one H200, from FLOP counts (the ones `benchmarks/
train_step.py` counts for MFU) and measured rates. `DIR/rehearsal.json`, `DIR/rehearsal.md`, the run in
`DIR/run` (its own `report.md`), the data in `DIR/data` and every command's output in `DIR/logs`.

Generation stops at EOS or at `--max_decode_length` / `--max_summary_length` tokens (the official 200): a
barely trained student that never emits EOS decodes every stage to the cap. The report gives the mean
generated length of the test chains, so a run says whether its model learnt to stop. On a GPU pass
`--dtype bfloat16` (the default there).
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from typing import Optional

import flops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET = "csqa"
EXPERIMENT_GIN = "gin/experiments/csqa_t5_small_sft.gin"
RUN_GIN = "gin/runs/pipeline.gin"
NUM_OPTIONS = 5
# The paper's pipeline, projected.
PAPER = {"train_questions": 8520, "validation_questions": 1221, "test_questions": 1221, "teacher_samples": 8,
         "epochs": 10, "sft_batch": 64, "interval": 100, "iterations": 5, "num_samples": 10, "rounds": 10,
         "dpo_batch": 32}
PROJECTED_MODELS = ("t5_1_0_small", "t5_1_0_base", "t5_1_0_large")
# Measured rates from README.md's "Performance" (the scripts in benchmarks/), the anchors of the projection.
# CPU: the 2-core development CPU, float32, t5-small. H200: bf16 compute, fp32 parameters.
README_RATES = {
    "cpu": {
        "sft": {"model": "t5_1_0_small", "examples_per_s": 2.4, "input": 200, "target": 64},
        # 8 toy-world questions x 4 chains, recall sampled, every stage up to 128 tokens (random weights run on).
        "chains": {"model": "t5_1_0_small", "chains_per_s": 0.8, "input": 100, "generated": 128},
        "dpo": {"model": "t5_1_0_small", "pairs_per_s": 1.2, "input": 200, "target": 128},
    },
    "h200": {
        "sft": {"model": "t5_1_0_base", "examples_per_s": 387_400 / 264, "input": 200, "target": 64},
        "sft_small": {"model": "t5_1_0_small", "examples_per_s": 832_600 / 264, "input": 200, "target": 64},
        # 16 questions x 10 chains (the paper's N), every stage up to 128 tokens.
        "chains": {"model": "t5_1_0_small", "chains_per_s": 119.4, "input": 100, "generated": 128},
        "dpo": {"model": "t5_1_0_small", "pairs_per_s": 1015.0, "input": 200, "target": 128},
    },
}


# ----------------------------------------------------------------------------------------------------------
# FLOP counts


def parameter_counts(model_name: str) -> dict:
    """`flops.parameter_groups` of a named model shape."""
    from tinythinker_jax.models import t5

    return flops.parameter_groups(t5.model_config(model_name))


def forward_flops(counts: dict, input_length: float, target_length: float) -> float:
    """One forward pass (scoring, or decoding `target_length` tokens with a KV cache): a third of training."""
    return flops.train_flops(counts, input_length, target_length) / 3.0


def chain_flops(counts: dict, lengths: dict) -> float:
    """Forward FLOPs of one three-stage chain: recall, one analysis per option, the summary, each a decode of
    `lengths[stage] = (input tokens, generated tokens)`."""
    return (forward_flops(counts, *lengths["recall"]) + NUM_OPTIONS * forward_flops(counts, *lengths["analyze"])
            + forward_flops(counts, *lengths["summarize"]))


# ----------------------------------------------------------------------------------------------------------
# Running and measuring one command


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4000))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.replace("\r", "\n").split("\n") if line.strip()]
    return lines[-1][:160] if lines else ""


def run_command(name: str, argv: list[str], log_dir: str, env: dict, heartbeat: float = 60.0) -> dict:
    """Runs `argv` from the repository root with its output in `log_dir/<name>.log`; returns its wall time,
    peak RSS (`os.wait4`'s rusage of that one child) and CPU time. Prints a line every `heartbeat` seconds."""
    log_path = os.path.join(log_dir, f"{name}.log")
    print(f"[{name}] {' '.join(argv[2:])}", flush=True)
    started = time.time()
    with open(log_path, "w") as log:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    stop = threading.Event()

    def beat():
        while not stop.wait(heartbeat):
            print(f"[{name}] {time.time() - started:7.0f} s  {_last_line(log_path)}", flush=True)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    except BaseException:
        process.kill()
        raise
    finally:
        stop.set()
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.time() - started
    result = {"started": started, "wall_seconds": wall, "peak_rss_mb": usage.ru_maxrss / 1024.0,
              "cpu_seconds": usage.ru_utime + usage.ru_stime, "log": log_path}
    if process.returncode != 0:
        raise SystemExit(f"[{name}] failed with exit status {process.returncode} after {wall:.0f} s; "
                         f"its output ends:\n{_tail(log_path)}\n(all of it: {log_path})")
    print(f"[{name}] done in {wall:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
    return result


def _tail(path: str, chars: int = 3000) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - chars))
        return f.read().decode("utf-8", "replace").replace("\r", "\n")


def read_json(path: str) -> Optional[dict]:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_metrics(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def split_metrics(rows: list[dict], batch_size: int) -> dict:
    """Training and validation time from a `metrics.jsonl`: each training row covers the steps since the
    previous one at its `examples_per_second`; a validation row comes right after the training row of its
    step, so the gap between them is the validation (and the best model's save)."""
    train_seconds, steps, validation_seconds, validations, previous = 0.0, 0, 0.0, 0, None
    first_start, window_rates = None, []
    for row in rows:
        if "examples_per_second" in row:
            window = row["step"] - (previous["step"] if previous and "step" in previous else 0)
            if window > 0 and row["examples_per_second"] > 0:
                seconds = window * batch_size / row["examples_per_second"]
                train_seconds += seconds
                steps += window
                window_rates.append(row["examples_per_second"])
                if first_start is None:
                    first_start = row["time"] - seconds
            previous = row
        elif "validation/accuracy" in row:
            validations += 1
            if previous is not None:
                validation_seconds += row["time"] - previous["time"]
            previous = row
    last = rows[-1]["time"] if rows else None
    return {"train_seconds": train_seconds, "steps": steps, "validation_seconds": validation_seconds,
            "validations": validations, "first_step_started": first_start, "last_row": last,
            "median_window_examples_per_s": statistics.median(window_rates) if window_rates else None,
            "final_validation_accuracy": next((r["validation/accuracy"] for r in reversed(rows)
                                               if "validation/accuracy" in r), None)}


def stage_steps(stats: dict, batch_size: int, interval: int, total_steps: int) -> dict[str, int]:
    """How many of `total_steps` each stream trained, by the trainer's own block schedule."""
    from tinythinker_jax.phases import schedule

    stages = list(stats)
    blocks = schedule.BlockSchedule(schedule.stage_blocks(stages, interval, NUM_OPTIONS),
                                    {s: -(-stats[s]["examples"] // batch_size) for s in stages})
    state, counts = schedule.BlockSchedule.initial_state(), dict.fromkeys(stages, 0)
    for _ in range(total_steps):
        draw, state = blocks.next(state)
        counts[draw.stream] += 1
    return counts


def cut_counts(stats: Optional[dict]) -> dict:
    return {stage: {"examples_cut": entry.get("examples_cut", 0), "tokens_cut": entry.get("tokens_cut", 0)}
            for stage, entry in (stats or {}).items()}


# ----------------------------------------------------------------------------------------------------------
# Lengths of what the student reads and writes


def teacher_lengths(data_dir: str, vocab: str, sample: int = 400) -> dict:
    """Mean tokens (EOS included) of each stage's inputs and targets over the first `sample` teacher records,
    as the trainer tokenises them: what a student that learnt to stop generates."""
    import sentencepiece

    from tinythinker_jax import formats
    from tinythinker_jax.data import examples, locations, records

    processor = sentencepiece.SentencePieceProcessor(model_file=vocab)
    teacher = records.read_teacher_records(locations.teacher_path(data_dir))[:sample]
    lengths = {}
    for stage in formats.stages_of("full"):
        rows = examples.stage_examples(teacher, stage, "full")
        inputs = [len(processor.encode(r["inputs"])) + 1 for r in rows]
        targets = [len(processor.encode(r["targets"])) + 1 for r in rows]
        lengths[stage] = {"input": statistics.mean(inputs), "target": statistics.mean(targets),
                          "max_input": max(inputs), "max_target": max(targets)}
    return lengths


def generated_lengths(predictions_path: str, vocab: str, caps: dict) -> Optional[dict]:
    """Mean generated tokens (EOS included when the model stopped) per stage in a test run's chains, and the
    share of texts that ran to the cap."""
    if not os.path.exists(predictions_path):
        return None
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=vocab)
    texts = {"recall": [], "analyze": [], "summarize": []}
    with open(predictions_path) as f:
        for line in f:
            for chain in json.loads(line)["chains"]:
                if chain.get("recall") is not None:
                    texts["recall"].append(chain["recall"])
                texts["analyze"] += list((chain.get("analyses") or {}).values())
                texts["summarize"].append(chain["summary"])
    result = {}
    for stage, stage_texts in texts.items():
        if not stage_texts:
            continue
        # A decoded text re-encodes to about as many pieces as were generated; at the cap there is no EOS.
        lengths = [min(len(processor.encode(text)) + 1, caps[stage]) for text in stage_texts]
        result[stage] = {"mean_tokens": statistics.mean(lengths),
                         "at_cap": sum(length >= caps[stage] for length in lengths) / len(lengths)}
    return result


# ----------------------------------------------------------------------------------------------------------
# The projection


def project(measured: dict, lengths: dict, scale: float, model: str, dtype: str, backend: str) -> dict:
    """Hours of the paper's pipeline per model on this machine (from this run's rates) and on one H200 and
    the development CPU (from README.md's rates), every rate carried to other models by FLOP ratios.

    `measured`: per kind of work (sft, chains, greedy_chains, score, dpo) the FLOPs this run did and the
    seconds they took, phase 1's and the pairs' stream statistics, and the pairs of one full-size iteration.
    `lengths`: the teacher's mean input and target tokens per stage. `scale`: full-size training questions
    over this run's."""
    from tinythinker_jax.reflection import iteration as reflection

    p = PAPER
    stats, pairs = measured["phase1_stats"], measured["pairs"]
    # Work of the paper's pipeline: this run's example and pair counts carried to 8,520 questions.
    examples = {stage: stats[stage]["examples"] * scale for stage in stats}
    batches = {stage: math.ceil(n / p["sft_batch"]) for stage, n in examples.items()}
    sft_steps = p["epochs"] * sum(batches.values())
    cycle = p["interval"] * (2 + NUM_OPTIONS)
    sft_validations = math.ceil(sft_steps / cycle)
    recall_pairs, analyze_pairs = pairs["recall"], pairs["analyze"]
    blocks = reflection.pair_blocks({"recall": int(recall_pairs), "analyze": int(analyze_pairs)}, "recall_analyze",
                                    p["dpo_batch"])
    dpo_steps, _ = reflection.training_steps(blocks, p["rounds"]) if blocks else (0, 0)
    step_pairs = dict(blocks) if blocks else {}
    work = {
        "sft_examples": {stage: p["epochs"] * batches[stage] * p["sft_batch"] for stage in batches},
        "sft_steps": sft_steps,
        "sft_validation_chains": sft_validations * p["validation_questions"],
        "sampled_chains_per_iteration": p["num_samples"] * (p["train_questions"] + recall_pairs),
        "scored_pairs_per_iteration": recall_pairs + analyze_pairs,
        "dpo_pairs_per_iteration": {stage: p["rounds"] * steps * p["dpo_batch"] for stage, steps in step_pairs.items()},
        "dpo_steps_per_iteration": dpo_steps,
        "validation_chains_per_iteration": p["rounds"] * p["validation_questions"],
        "test_chains": (p["iterations"] + 1) * p["test_questions"],
    }
    teacher_chain = {stage: (lengths["teacher"][stage]["input"], lengths["teacher"][stage]["target"])
                     for stage in ("recall", "analyze", "summarize")}

    def flops_of(counts: dict) -> dict:
        sft = sum(n * flops.train_flops(counts, stats[stage]["input_length"], stats[stage]["target_length"])
                  for stage, n in work["sft_examples"].items())
        chain = chain_flops(counts, teacher_chain)
        pair_shapes = measured.get("pair_stats") or {}

        def pair_flops(stage: str, kind) -> float:
            shape = pair_shapes.get(stage) or {"input_length": 200, "target_length": 64}
            return 2 * kind(counts, shape["input_length"], shape["target_length"])

        score = (recall_pairs * pair_flops("recall", forward_flops)
                 + analyze_pairs * pair_flops("analyze", forward_flops))
        dpo = sum(n * pair_flops(stage, flops.train_flops) for stage, n in work["dpo_pairs_per_iteration"].items())
        return {"sft": sft, "sampled_chains": work["sampled_chains_per_iteration"] * chain,
                "sft_validation": work["sft_validation_chains"] * chain,
                "validation": work["validation_chains_per_iteration"] * chain, "test": work["test_chains"] * chain,
                "score": score, "dpo": dpo}

    def hours(counts: dict, rates: dict) -> dict:
        f = flops_of(counts)
        seconds = {
            "phase1": (f["sft"] / rates["sft"] + f["sft_validation"] / rates["greedy_chains"]),
            "iteration": (f["sampled_chains"] / rates["chains"] + f["score"] / rates["score"]
                          + f["dpo"] / rates["dpo"] + f["validation"] / rates["greedy_chains"]),
            "test": f["test"] / rates["greedy_chains"],
        }
        seconds["iterations"] = p["iterations"] * seconds["iteration"]
        seconds["total"] = seconds["phase1"] + seconds["iterations"] + seconds["test"]
        return {key: value / 3600.0 for key, value in seconds.items()}

    counts_of = {name: parameter_counts(name) for name in {model, *PROJECTED_MODELS}}
    # This run: FLOP/s achieved per kind of work.
    here = {kind: entry["flops"] / entry["seconds"] for kind, entry in measured["flops"].items()
            if entry["seconds"] > 0}
    here.setdefault("greedy_chains", here.get("chains"))
    here.setdefault("score", here.get("dpo", 0) * 3 if here.get("dpo") else None)

    def readme_rates(target: str) -> dict:
        anchors = README_RATES[target]
        sft = anchors["sft"]
        sft_counts = counts_of.setdefault(sft["model"], parameter_counts(sft["model"]))
        sft_rate = sft["examples_per_s"] * flops.train_flops(sft_counts, sft["input"], sft["target"])
        chains = anchors["chains"]
        chain_rate = chains["chains_per_s"] * chain_flops(
            counts_of[chains["model"]], dict.fromkeys(teacher_chain, (chains["input"], chains["generated"])))
        dpo = anchors["dpo"]
        dpo_rate = dpo["pairs_per_s"] * 2 * flops.train_flops(counts_of[dpo["model"]], dpo["input"], dpo["target"])
        return {"sft": sft_rate, "chains": chain_rate, "greedy_chains": chain_rate, "dpo": dpo_rate,
                "score": dpo_rate}  # a scored pair is a third of a DPO pair's FLOPs: 3x the pairs/s

    targets = {f"this machine ({backend}, {dtype}, from this run's {model} rates)": here,
               "2-core development CPU (README's t5-small rates)": readme_rates("cpu"),
               "one H200, bf16 (README's rates)": readme_rates("h200")}
    table = {}
    for target, rates in targets.items():
        if not all(rates.get(k) for k in ("sft", "chains", "greedy_chains", "score", "dpo")):
            continue
        table[target] = {name: hours(counts_of[name], rates) for name in (model, *PROJECTED_MODELS)}
    return {"work": work, "achieved_flops_per_s": here, "hours": table,
            "assumptions": [
                f"Work of the paper's pipeline: phase 1 {p['epochs']} epochs at batch {p['sft_batch']} over the three "
                f"stage streams (this run's example counts x {scale:.2f} to 8,520 questions), validation every "
                f"{cycle} steps (interval {p['interval']}) on {p['validation_questions']} questions; {p['iterations']} "
                f"iterations, each {p['num_samples']} sampled chains per training question plus {p['num_samples']} "
                f"per recall-pair row (step 5), reference scoring of every pair, DPO for {p['rounds']} rounds of the "
                f"paper's blocks at batch {p['dpo_batch']}, validation after each round; test evaluation of the "
                f"{p['iterations'] + 1} phases' best models.",
                "Every iteration is assumed to yield this run's pairs per question (a better student yields fewer).",
                "A chain is 7 decodes (recall, 5 analyses, summary) generating the teacher's mean target lengths "
                "from the teacher's mean input lengths; a projected student is assumed to stop where the teacher did.",
                "FLOPs per example as benchmarks/train_step.py counts them for MFU (6 per weight per token it "
                "multiplies plus attention); a forward pass (decoding, scoring) is a third; a DPO pair is two "
                "training examples (chosen and rejected) at the pair stream's widths.",
                "Each kind of work (SFT steps, sampled chains, greedy chains, scoring, DPO) keeps the FLOP/s that "
                "was measured for it: this run's for this machine, README.md's t5-small (CPU) or t5-base/t5-small "
                "(H200) benchmark rates otherwise. Small models reach far fewer FLOP/s than large ones (per-token "
                "work over the 32,128-entry vocabulary, sampling, dispatch), so scaling a tiny model's rates to "
                "t5-small and up overstates their hours; the README-anchored rows are the better guess.",
                "No scoring rate is in README.md: a scored pair is taken to cost a third of a DPO pair at the DPO "
                "rate's FLOP/s.",
            ]}


def estimate_full_size(args: argparse.Namespace, measured: dict, sizes: dict, train_questions: int,
                       validation_questions: int, test_questions: int, sft: dict, counts: dict, scored: dict,
                       dpo: dict) -> dict:
    """Wall time of this rehearsal at full size (every training question, 1,221 validation and test
    questions, the paper's 10 samples and 10 rounds; this run's phase-1 steps and generation caps) on this
    machine, from this run's per-unit times: each phase's start-up is kept, its work scaled."""
    from tinythinker_jax.reflection import iteration as reflection

    full_train, full_validation, full_test = sizes["train"], sizes["validation"], sizes["test"]
    samples, rounds, batch = PAPER["num_samples"], PAPER["rounds"], args.reflect_batch_size
    per = lambda seconds, n: seconds / n if n else None  # noqa: E731
    validation_chains = sft["validations"] * validation_questions + dpo["validations"] * validation_questions
    greedy = per(sft["validation_seconds"] + dpo["validation_seconds"], validation_chains)
    sampled_chains = args.num_samples * (counts["questions"] + counts["recall"])
    sampled = per(counts["wall_seconds"], sampled_chains)
    pairs = counts["recall"] + counts["analyze"]
    score = per(scored.get("wall_seconds", 0.0), pairs)
    dpo_pair = per(dpo["train_seconds"], dpo["steps"] * batch)
    phase1, reflect, test = measured["phase1"], measured["reflect"], measured["test"]
    setup = (sft["first_step_started"] - phase1["started"]) if sft["first_step_started"] else 0.0
    full_counts = {stage: round(counts[stage] / max(counts["questions"], 1) * full_train)
                   for stage in ("recall", "analyze")}
    blocks = reflection.pair_blocks(full_counts, "recall_analyze", batch)
    dpo_steps = reflection.training_steps(blocks, rounds)[0] if blocks else 0
    test_chains_here = 2 * test_questions
    test_fixed = max(test["wall_seconds"] - test_chains_here * (greedy or 0.0), 0.0)
    reflect_fixed = max(reflect["wall_seconds"] - counts["wall_seconds"] - scored.get("wall_seconds", 0.0)
                        - dpo["train_seconds"] - dpo["validation_seconds"], 0.0)
    phase1_fixed = max(phase1["wall_seconds"] - setup - sft["train_seconds"] - sft["validation_seconds"], 0.0)
    seconds = {
        "split": measured["split"]["wall_seconds"],
        "teacher": measured["teacher"]["wall_seconds"] * full_train / max(train_questions, 1),
        # Start-up and data loading taken as proportional to the examples (an upper bound: imports are fixed).
        "phase1 start-up and data": setup * full_train / max(train_questions, 1),
        "phase1 steps": sft["train_seconds"],
        "phase1 validation": full_validation * (greedy or 0.0),
        "phase1 rest": phase1_fixed,
        "sample chains": samples * (full_train + full_counts["recall"]) * (sampled or 0.0),
        "score pairs": (full_counts["recall"] + full_counts["analyze"]) * (score or 0.0),
        "DPO steps": dpo_steps * batch * (dpo_pair or 0.0),
        "DPO validation": rounds * full_validation * (greedy or 0.0),
        "reflect rest": reflect_fixed,
        "test": test_fixed + 2 * full_test * (greedy or 0.0),
    }
    return {"seconds": seconds, "total_seconds": sum(seconds.values()),
            "work": {"sampled_chains": samples * (full_train + full_counts["recall"]), "pairs": full_counts,
                     "dpo_steps": dpo_steps, "validation_chains": (1 + rounds) * full_validation,
                     "test_chains": 2 * full_test},
            "per_unit_seconds": {"greedy_chain": greedy, "sampled_chain": sampled, "scored_pair": score,
                                 "dpo_pair": dpo_pair, "sft_step": per(sft["train_seconds"], sft["steps"])}}


# ----------------------------------------------------------------------------------------------------------
# The report


def _fmt_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def write_markdown(report: dict, path: str) -> None:
    s = report["settings"]
    lines = [f"# Rehearsal of the real-data workflow: CSQA, {s['model']}, {report['machine']['backend']}",
             "",
             f"Training questions {report['sizes']['train_questions']:,} (teacher records), validation "
             f"{report['sizes']['validation_questions']:,}, test {report['sizes']['test_questions']:,}; phase 1 "
             f"{s['sft_steps']} steps (batch 64, interval {s['sft_interval']}, learning rate "
             f"{s['sft_learning_rate']}); "
             f"iteration 1: {s['num_samples']} chains per question, DPO {s['rounds']} round(s) at batch "
             f"{s['reflect_batch_size']}; generation caps {s['max_decode_length']} (recall, analyses) and "
             f"{s['max_summary_length']} (summary) tokens. Total wall time {_fmt_seconds(report['wall_seconds'])} "
             f"on {report['machine']['cpu_count']} CPU cores ({report['machine']['load_average']} load average at "
             "the end).",
             "",
             "## Phases",
             "",
             "| phase | wall | peak RSS | work | rate |",
             "|---|---|---|---|---|"]
    for row in report["table"]:
        lines.append(f"| {row['phase']} | {_fmt_seconds(row['seconds'])} | "
                     f"{'-' if row.get('peak_rss_mb') is None else format(row['peak_rss_mb'], ',.0f') + ' MB'} | "
                     f"{row.get('work', '')} | {row.get('rate', '')} |")
    lines += ["", "Rows indented with `-` are parts of the phase above them (from its markers and metrics.jsonl); "
              "peak RSS is per process.", "", "## Data statistics (cut counts must be 0)", "",
              "| stream | examples | max input | max target | input width | target width | examples cut | tokens cut |",
              "|---|---|---|---|---|---|---|---|"]
    for source, stats in report["data_stats"].items():
        for stage, entry in (stats or {}).items():
            lines.append(f"| {source} {stage} | {entry.get('examples', '-'):,} | "
                         f"{entry.get('max_input_tokens', '-')} | {entry.get('max_target_tokens', '-')} | "
                         f"{entry.get('input_length', '-')} | {entry.get('target_length', '-')} | "
                         f"{entry.get('examples_cut', 0)} | {entry.get('tokens_cut', 0)} |")
    lines += ["", f"Cuts: **{'none' if report['cuts_ok'] else 'SOME (see above)'}**.", "",
              "## Lengths", "",
              "| stage | teacher input (mean) | teacher target (mean) | generated on test (mean) | share at the cap |",
              "|---|---|---|---|---|"]
    generated = report["lengths"].get("generated") or {}
    for stage, entry in report["lengths"]["teacher"].items():
        gen = generated.get(stage) or {}
        lines.append(f"| {stage} | {entry['input']:.1f} (max {entry['max_input']}) | {entry['target']:.1f} | "
                     f"{gen.get('mean_tokens', float('nan')):.1f} | {gen.get('at_cap', float('nan')):.0%} |")
    full = report["full_size"]
    work = full["work"]
    lines += ["", "## Estimate: this rehearsal at full size on this machine", "",
              f"Every training question ({report['sizes']['train_split']:,}), {report['sizes']['validation_split']:,} "
              f"validation and {report['sizes']['test_split']:,} test questions, {PAPER['num_samples']} samples, "
              f"{PAPER['rounds']} DPO rounds; this run's phase-1 steps and generation caps. Work: "
              f"{work['sampled_chains']:,} sampled chains, {work['pairs']['recall']:,} recall + "
              f"{work['pairs']['analyze']:,} analyze pairs, {work['dpo_steps']:,} DPO steps, "
              f"{work['validation_chains']:,} validation and {work['test_chains']:,} test chains; each at this run's "
              f"time per unit, each phase's start-up kept.", "",
              "| part | estimate |", "|---|---|"]
    lines += [f"| {part} | {_fmt_seconds(seconds)} |" for part, seconds in full["seconds"].items()]
    lines += [f"| **total** | **{_fmt_seconds(full['total_seconds'])}** |"]
    proj = report["projection"]
    lines += ["", "## Projection: the paper's pipeline (10 epochs, 5 iterations), hours", ""]
    work = proj["work"]
    lines += [f"Work: phase 1 {work['sft_steps']:,} steps and {work['sft_validation_chains']:,} validation chains; "
              f"per iteration {work['sampled_chains_per_iteration']:,.0f} sampled chains, "
              f"{work['scored_pairs_per_iteration']:,.0f} scored pairs, {work['dpo_steps_per_iteration']:,} DPO steps, "
              f"{work['validation_chains_per_iteration']:,} validation chains; {work['test_chains']:,} test chains.",
              "",
              "| where | model | phase 1 | one iteration | 5 iterations | test | total |",
              "|---|---|---|---|---|---|---|"]
    for target, models in proj["hours"].items():
        for name, h in models.items():
            lines.append(f"| {target} | {name} | {h['phase1']:,.2f} | {h['iteration']:,.2f} | {h['iterations']:,.2f} | "
                         f"{h['test']:,.2f} | {h['total']:,.2f} |")
    lines += ["", "Achieved FLOP/s in this run: " + ", ".join(
        f"{kind} {rate / 1e9:,.1f} GFLOP/s" for kind, rate in proj["achieved_flops_per_s"].items() if rate), "",
        "Assumptions:", ""] + [f"- {a}" for a in proj["assumptions"]]
    lines += ["", f"The run's own report: `{report['paths']['run_report']}`."]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    data = os.environ.get("TINYTHINKER_DATA_DIR")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="a new directory for the run, the logs and the report")
    p.add_argument("--model", default="t5_1_0_tiny",
                   help="a gin/models/ name (T5 1.0: the T5 vocabulary's 32,128 rows)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"),
                   help="compute dtype (default: bfloat16 when JAX sees a GPU, else float32)")
    p.add_argument("--train_questions", type=int,
                   help="teacher records for the first N training questions (default: all 8,520)")
    p.add_argument("--validation_questions", type=int, help="validation questions per validation (default: all 1,221)")
    p.add_argument("--test_questions", type=int, help="test questions (default: all 1,221)")
    p.add_argument("--reflect_questions", type=int,
                   help="iteration 1 samples the first N training questions (REFLECT_MAX_QUESTIONS; default: all)")
    p.add_argument("--sft_steps", type=int, default=420,
                   help="phase-1 steps (batch 64); with the defaults t5_1_0_tiny learns to stop at the teacher's "
                        "lengths (recall ~30, analyses ~25 tokens) by 420")
    p.add_argument("--sft_interval", type=int, default=1,
                   help="phase-1 block interval: recall x N, analyze x 5N, summarize x N steps. The paper's 100 "
                        "leaves a run of under 700 steps without summarize steps, and a tiny student trained in "
                        "long blocks writes the last block's text (the summary) in every stage")
    p.add_argument("--sft_learning_rate", type=float, default=3e-3,
                   help="phase-1 peak learning rate (the paper's 5e-4 is for pretrained weights; a randomly "
                        "initialised student needs more to learn the format within a few hundred steps)")
    p.add_argument("--num_samples", type=int, default=10, help="chains per question in iteration 1 (NUM_SAMPLES)")
    p.add_argument("--rounds", type=int, default=10, help="DPO rounds in iteration 1 (ROUNDS)")
    p.add_argument("--reflect_batch_size", type=int, default=32, help="DPO pairs per step (REFLECT_BATCH_SIZE)")
    p.add_argument("--max_decode_length", type=int, default=200, help="generation cap of recall and analyses")
    p.add_argument("--max_summary_length", type=int, default=200, help="generation cap of the summary")
    p.add_argument("--raw_dir", default=data and os.path.join(data, "csqa"), help="default: $TINYTHINKER_DATA_DIR/csqa")
    p.add_argument("--exemplars_dir", default=data and os.path.join(data, "exemplars"),
                   help="csqa_cot.json and request.json (default: $TINYTHINKER_DATA_DIR/exemplars)")
    p.add_argument("--vocab", default=data and os.path.join(os.path.dirname(os.path.normpath(data)), "vocab",
                                                           "t5_spiece.model"),
                   help="the T5 SentencePiece model (default: $TINYTHINKER_DATA_DIR/../vocab/t5_spiece.model)")
    p.add_argument("--heartbeat", type=float, default=60.0, help="seconds between progress lines")
    args = p.parse_args(argv)
    for name in ("raw_dir", "exemplars_dir", "vocab"):
        if not getattr(args, name) or not os.path.exists(getattr(args, name)):
            p.error(f"--{name} {getattr(args, name)!r} does not exist (set TINYTHINKER_DATA_DIR or pass --{name})")
    return args


def detect_backend() -> str:
    """JAX's default backend, asked in a child process so that this one never claims an accelerator."""
    probe = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"], capture_output=True,
                           text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return (probe.stdout.strip().splitlines() or ["cpu"])[-1]


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.time()
    out = os.path.abspath(args.out)
    if os.path.exists(os.path.join(out, "run")) or os.path.exists(os.path.join(out, "data")):
        raise SystemExit(f"{out} already holds a rehearsal: pick a new --out (timings of a resumed run would mislead)")
    data_dir, run_dir, log_dir = (os.path.join(out, name) for name in ("data/csqa", "run", "logs"))
    os.makedirs(log_dir, exist_ok=True)
    backend = detect_backend()
    dtype = args.dtype or ("bfloat16" if backend == "gpu" else "float32")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    # This process only counts parameters; it must never take the accelerator from the commands.
    os.environ["JAX_PLATFORMS"] = "cpu"
    cli = [sys.executable, "-m", "tinythinker_jax.cli"]
    measured: dict = {}

    # 1. Splits and the TFDS build.
    measured["split"] = run_command("split", cli + ["data", "split", "--dataset", DATASET, "--raw_dir", args.raw_dir,
                                                    "--out_dir", data_dir], log_dir, env, args.heartbeat)
    sizes = {split: sum(1 for _ in open(os.path.join(data_dir, f"{split}.jsonl")))
             for split in ("train", "validation", "test")}

    # 2. Teacher records from the scripted server (paper prompt, paper lengths).
    from tinythinker_jax.teacher import fake_server

    teacher_split_dir = data_dir
    if args.train_questions is not None:
        teacher_split_dir = os.path.join(out, "data", "teacher_questions")
        os.makedirs(teacher_split_dir, exist_ok=True)
        with open(os.path.join(data_dir, "train.jsonl")) as f, \
                open(os.path.join(teacher_split_dir, "train.jsonl"), "w") as g:
            for index, line in enumerate(f):
                if index >= args.train_questions:
                    break
                g.write(line)
    with fake_server.ScriptedServer(fake_server.paper_length_reply) as server:
        measured["teacher"] = run_command("teacher", cli + [
            "teacher", "run", "--dataset", DATASET, "--split_dir", teacher_split_dir,
            "--out_dir", os.path.join(data_dir, "teacher"), "--base_url", server.base_url, "--model", "local",
            "--prompt_mode", "paper", "--request_file", os.path.join(args.exemplars_dir, "request.json"),
            "--exemplars", os.path.join(args.exemplars_dir, f"{DATASET}_cot.json"), "--no-progress",
        ], log_dir, env, args.heartbeat)
        requests = len(server.requests)
    teacher_report = read_json(os.path.join(data_dir, "teacher", "train_report.json"))
    train_questions = teacher_report["records"]
    validation_questions = min(sizes["validation"], args.validation_questions or sizes["validation"])
    test_questions = min(sizes["test"], args.test_questions or sizes["test"])
    reflect_questions = min(train_questions, args.reflect_questions or train_questions)

    # 3-5. Phase 1, iteration 1, test evaluation and the run's report, by one gin configuration.
    gin = [f"--gin_file={RUN_GIN}", f"--gin_file={EXPERIMENT_GIN}", f"--gin_file=gin/models/{args.model}.gin",
           f'--gin.MODEL_DIR="{run_dir}"', f'--gin.DATA_DIR="{data_dir}"', f'--gin.VOCABULARY_PATH="{args.vocab}"',
           "--gin.ITERATIONS=1", f"--gin.TRAIN_STEPS={args.sft_steps}", f"--gin.INTERVAL={args.sft_interval}",
           f"--gin.trainer.train.eval_every={args.sft_steps}",
           f"--gin.optimizers.create_optimizer.learning_rate={args.sft_learning_rate}",
           f"--gin.NUM_SAMPLES={args.num_samples}", f"--gin.ROUNDS={args.rounds}",
           f"--gin.REFLECT_BATCH_SIZE={args.reflect_batch_size}",
           f"--gin.chains.ChainSettings.max_decode_length={args.max_decode_length}",
           f"--gin.chains.ChainSettings.max_summary_length={args.max_summary_length}",
           f"--gin.t5.model_config.dtype='{dtype}'"]
    if args.validation_questions is not None:
        gin += [f"--gin.trainer.train.max_eval_questions={validation_questions}",
                f"--gin.iteration.run_iteration.max_eval_questions={validation_questions}"]
    if args.test_questions is not None:
        gin += [f"--gin.pipeline.run_pipeline.max_test_questions={test_questions}"]
    if args.reflect_questions is not None:
        gin += [f"--gin.REFLECT_MAX_QUESTIONS={reflect_questions}"]
    # Phase 1 trains in MODEL_DIR/sft, as the pipeline runs it (a later binding of a macro wins).
    measured["phase1"] = run_command("phase1", cli + ["train"] + gin + [f'--gin.MODEL_DIR="{run_dir}/sft"'], log_dir,
                                     env, args.heartbeat)
    measured["reflect"] = run_command("reflect", cli + ["reflect", "--gin.ITERATION=1"] + gin, log_dir, env,
                                      args.heartbeat)
    measured["test"] = run_command("test", cli + ["pipeline"] + gin, log_dir, env, args.heartbeat)
    context = {"started": started, "backend": backend, "dtype": dtype, "sizes": sizes, "requests": requests,
               "train_questions": train_questions, "validation_questions": validation_questions,
               "test_questions": test_questions, "measured": measured}
    with open(os.path.join(log_dir, "phases.json"), "w") as f:
        json.dump(context, f, indent=2)
    return build_report(args, out, context)


def build_report(args: argparse.Namespace, out: str, context: dict) -> int:
    """Reads what the phases wrote, computes the rates and the projection, writes `rehearsal.json` and
    `rehearsal.md`; 1 when an example was cut."""
    started, backend, dtype, sizes, requests, measured = (
        context[key] for key in ("started", "backend", "dtype", "sizes", "requests", "measured"))
    train_questions, validation_questions, test_questions = (
        context[key] for key in ("train_questions", "validation_questions", "test_questions"))
    data_dir, run_dir, log_dir = (os.path.join(out, name) for name in ("data/csqa", "run", "logs"))
    teacher_report = read_json(os.path.join(data_dir, "teacher", "train_report.json"))

    # What the phases wrote.
    sft_dir = os.path.join(run_dir, "sft")
    iteration_dir = os.path.join(run_dir, "reflect", "iteration_1")
    phase1_stats = read_json(os.path.join(sft_dir, "data_stats.json"))
    pair_stats = read_json(os.path.join(iteration_dir, "data_stats.json"))
    counts = read_json(os.path.join(iteration_dir, "pairs", "counts.json"))
    scored = read_json(os.path.join(iteration_dir, "pairs", "scored.json")) or {}
    done = read_json(os.path.join(iteration_dir, "done.json")) or {}
    sft_metrics = split_metrics(read_metrics(os.path.join(sft_dir, "metrics.jsonl")), 64)
    dpo_metrics = split_metrics(read_metrics(os.path.join(iteration_dir, "metrics.jsonl")), args.reflect_batch_size)
    caps = {"recall": args.max_decode_length, "analyze": args.max_decode_length, "summarize": args.max_summary_length}
    lengths = {"teacher": teacher_lengths(data_dir, args.vocab),
               "generated": generated_lengths(os.path.join(sft_dir, "test", "predictions_test.jsonl"), args.vocab,
                                              caps)}
    test_summaries = {phase: read_json(os.path.join(d, "test", "summary_test.json"))
                      for phase, d in (("sft", sft_dir), ("iteration_1", iteration_dir))}

    # Rates, and the FLOPs behind them for the projection.
    counts_here = parameter_counts(args.model)
    widths = {stage: (entry["input_length"], entry["target_length"]) for stage, entry in phase1_stats.items()}
    trained = stage_steps(phase1_stats, 64, args.sft_interval, sft_metrics["steps"])
    sft_flops = sum(steps * 64 * flops.train_flops(counts_here, *widths[stage]) for stage, steps in trained.items())
    generated = lengths["generated"] or {}
    # The chains this run decoded: the mean generated length on the test split stands for every chain.
    run_chain = {stage: (lengths["teacher"][stage]["input"],
                         (generated.get(stage) or {}).get("mean_tokens", caps[stage]))
                 for stage in ("recall", "analyze", "summarize")}
    chain_cost = chain_flops(counts_here, run_chain)
    sampled_chains = args.num_samples * (counts["questions"] + counts["recall"])
    generate_seconds = counts["wall_seconds"]
    pair_total = counts["recall"] + counts["analyze"]
    pair_shape = {stage: (entry["input_length"], entry["target_length"]) for stage, entry in (pair_stats or {}).items()}
    score_flops = sum(counts[stage] * 2 * forward_flops(counts_here, *pair_shape[stage]) for stage in pair_shape)
    dpo_pairs = dpo_metrics["steps"] * args.reflect_batch_size
    # DPO steps alternate between the streams by the paper's blocks; weight each stream by its block share.
    blocks = {}
    if counts["recall"] or counts["analyze"]:
        from tinythinker_jax.reflection import iteration as reflection

        blocks = dict(reflection.pair_blocks(counts, "recall_analyze", args.reflect_batch_size))
    block_total = sum(blocks.values()) or 1
    dpo_flops = sum(dpo_pairs * steps / block_total * 2 * flops.train_flops(counts_here, *pair_shape[stage])
                    for stage, steps in blocks.items() if stage in pair_shape)
    sft_validation_chains = sft_metrics["validations"] * validation_questions
    dpo_validation_chains = dpo_metrics["validations"] * validation_questions
    validation_seconds = sft_metrics["validation_seconds"] + dpo_metrics["validation_seconds"]
    test_chains = sum(1 for s in test_summaries.values() if s) * test_questions
    test_eval_seconds = measured["test"]["wall_seconds"]
    greedy_chains = sft_validation_chains + dpo_validation_chains
    measured_flops = {
        "sft": {"flops": sft_flops, "seconds": sft_metrics["train_seconds"]},
        "chains": {"flops": sampled_chains * chain_cost, "seconds": generate_seconds},
        "greedy_chains": {"flops": greedy_chains * chain_cost, "seconds": validation_seconds},
        "score": {"flops": score_flops, "seconds": scored.get("wall_seconds", 0.0) if score_flops else 0.0},
        "dpo": {"flops": dpo_flops, "seconds": dpo_metrics["train_seconds"]},
    }

    def rate(n, seconds, unit):
        return f"{n / seconds:,.2f} {unit}/s" if seconds and n else "-"

    p1, rf, te = measured["phase1"], measured["reflect"], measured["test"]
    sft_setup = (sft_metrics["first_step_started"] - p1["started"]) if sft_metrics["first_step_started"] else None
    reflect_wall = done.get("wall_seconds", {})
    table = [
        {"phase": "split (data split + TFDS build)", "seconds": measured["split"]["wall_seconds"],
         "peak_rss_mb": measured["split"]["peak_rss_mb"], "work": f"{sum(sizes.values()):,} questions",
         "rate": rate(sum(sizes.values()), measured["split"]["wall_seconds"], "questions")},
        {"phase": "teacher (teacher run, scripted server)", "seconds": measured["teacher"]["wall_seconds"],
         "peak_rss_mb": measured["teacher"]["peak_rss_mb"],
         "work": f"{train_questions:,} questions, {requests:,} requests, {teacher_report['samples_kept']:,} samples",
         "rate": rate(train_questions, measured["teacher"]["wall_seconds"], "questions")},
        {"phase": "phase 1 (train)", "seconds": p1["wall_seconds"], "peak_rss_mb": p1["peak_rss_mb"],
         "work": f"{sft_metrics['steps']:,} steps ({', '.join(f'{s} {n}' for s, n in trained.items())})",
         "rate": rate(sft_metrics["steps"] * 64, sft_metrics["train_seconds"], "examples")},
        {"phase": "- start-up, data loading, model", "seconds": sft_setup},
        {"phase": "- training steps", "seconds": sft_metrics["train_seconds"],
         "work": f"{sft_metrics['steps'] * 64:,} examples",
         "rate": rate(sft_metrics["steps"] * 64, sft_metrics["train_seconds"], "examples")},
        {"phase": "- validation", "seconds": sft_metrics["validation_seconds"],
         "work": f"{sft_validation_chains:,} greedy chains",
         "rate": rate(sft_validation_chains, sft_metrics["validation_seconds"], "chains")},
        {"phase": "reflect (iteration 1)", "seconds": rf["wall_seconds"], "peak_rss_mb": rf["peak_rss_mb"],
         "work": f"{counts['questions']:,} questions, {counts['recall']:,} recall + "
                 f"{counts['analyze']:,} analyze pairs"},
        {"phase": "- sample chains, build pairs", "seconds": generate_seconds,
         "work": f"{sampled_chains:,} chains ({args.num_samples} x {counts['questions']:,} questions + "
                 f"{args.num_samples} x {counts['recall']:,} recall-pair rows)",
         "rate": rate(sampled_chains, generate_seconds, "chains")},
        {"phase": "- score pairs (reference)", "seconds": scored.get("wall_seconds"), "work": f"{pair_total:,} pairs",
         "rate": rate(pair_total, scored.get("wall_seconds"), "pairs")},
        {"phase": "- DPO (train, with validation)", "seconds": reflect_wall.get("train"),
         "work": f"{dpo_metrics['steps']:,} steps, {dpo_pairs:,} pairs, {dpo_metrics['validations']} validations",
         "rate": rate(dpo_pairs, dpo_metrics["train_seconds"], "pairs")},
        {"phase": "- validation", "seconds": dpo_metrics["validation_seconds"],
         "work": f"{dpo_validation_chains:,} greedy chains",
         "rate": rate(dpo_validation_chains, dpo_metrics["validation_seconds"], "chains")},
        {"phase": "test (pipeline: both phases' best on test, report)", "seconds": te["wall_seconds"],
         "peak_rss_mb": te["peak_rss_mb"], "work": f"{test_chains:,} greedy chains",
         "rate": rate(test_chains, test_eval_seconds, "chains")},
    ]
    stats_by_source = {"phase 1": phase1_stats, "iteration 1 pairs": pair_stats}
    cuts = {source: cut_counts(stats) for source, stats in stats_by_source.items()}
    cuts_ok = all(entry["examples_cut"] == 0 and entry["tokens_cut"] == 0
                  for source in cuts.values() for entry in source.values())
    scale = PAPER["train_questions"] / max(train_questions, 1)
    projection = project({"phase1_stats": phase1_stats, "pair_stats": pair_stats, "flops": measured_flops,
                           # Pairs per sampled question, carried to every training question of the paper.
                          "pairs": {stage: counts[stage] / max(counts["questions"], 1) * PAPER["train_questions"]
                                    for stage in ("recall", "analyze")}},
                         {"teacher": lengths["teacher"]}, scale, args.model, dtype, backend)
    full_size = estimate_full_size(args, measured, sizes, train_questions, validation_questions, test_questions,
                                   sft_metrics, counts, scored, dpo_metrics)
    report = {
        "settings": {**vars(args), "dtype": dtype, "out": out},
        "machine": {"backend": backend, "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "load_average": ", ".join(f"{x:.1f}" for x in os.getloadavg())},
        "sizes": {**{f"{k}_split": v for k, v in sizes.items()}, "train_questions": train_questions,
                  "validation_questions": validation_questions, "test_questions": test_questions,
                  "reflect_questions": counts["questions"]},
        "wall_seconds": time.time() - started,
        "phases": measured, "table": table,
        "teacher": {key: teacher_report.get(key) for key in ("records", "samples_kept", "filtered", "requests")},
        "phase1": sft_metrics, "reflect": {"counts": counts, "scored": scored, "done": done, "dpo": dpo_metrics},
        "test": test_summaries, "data_stats": stats_by_source, "cuts": cuts, "cuts_ok": cuts_ok,
        "lengths": lengths, "measured_flops": measured_flops, "projection": projection, "full_size": full_size,
        "paths": {"run": run_dir, "run_report": os.path.join(run_dir, "report.md"), "logs": log_dir},
    }
    with open(os.path.join(out, "rehearsal.json"), "w") as f:
        json.dump(report, f, indent=2, default=str)
    write_markdown(report, os.path.join(out, "rehearsal.md"))
    print(open(os.path.join(out, "rehearsal.md")).read())
    print(f"wrote {os.path.join(out, 'rehearsal.json')} and rehearsal.md in {_fmt_seconds(report['wall_seconds'])}")
    if not cuts_ok:
        print(f"error: some examples were cut: {json.dumps(cuts)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
