"""The study's tables and plot, from its cells' pipeline runs: `study.json`, `study.md`, `study.png`.

Every comparison is over the grid's seeds: the mean and sample standard deviation of each setting's test
accuracy, and, paired by seed (the same seed gives the same initialisation and data order), the difference from
the setting it is compared with and on how many seeds it is ahead.
"""

import json
import os
import statistics
from typing import Any, Optional, Sequence

from tinythinker_jax import formats, report, study, study_errors
from tinythinker_jax.data import records
from tinythinker_jax.data.toyworld import ToyWorld
from tinythinker_jax.phases import layout
from tinythinker_jax.reflection.iteration import PAIR_STAGE_TYPES

STUDY_JSON, STUDY_MD, STUDY_PLOT = "study.json", "study.md", "study.png"


def iteration_training(cell_dir: str, iteration: int) -> dict[str, Optional[float]]:
    """What an iteration's DPO training did, from its `metrics.jsonl`: the DPO loss of its first and last logged
    steps, and the reward accuracy and NLL of the last (None while the iteration has not trained)."""
    path = os.path.join(layout.iteration_dir(cell_dir, iteration), "metrics.jsonl")
    steps = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            steps = [row for row in map(json.loads, f) if "dpo_loss" in row]
    first, last = (steps[0], steps[-1]) if steps else ({}, {})
    return {"steps": len(steps), "first_dpo_loss": first.get("dpo_loss"), "last_dpo_loss": last.get("dpo_loss"),
            "last_reward_accuracy": last.get("rewards/accuracy"), "last_nll": last.get("nll")}


def summarize_study(out: str) -> dict[str, Any]:
    """Reads every finished cell of the study in `out` and compares them.

    Args:
        out: The study directory.

    Returns:
        What `study.json` holds: the settings, one entry per cell and the comparisons.
    """
    settings = study.read_settings(out)
    world = ToyWorld.generate(seed=settings["world_settings"]["seed"])
    grid = study.Grid(**{**settings["grid_settings"], "seeds": tuple(settings["grid_settings"]["seeds"]),
                         "bindings": tuple(settings["grid_settings"]["bindings"])})
    cells = []
    for cell in study.cells(grid):
        directory = cell.directory(out)
        if not os.path.exists(os.path.join(directory, report.PIPELINE_FILE)):
            continue
        summary = report.summarize(directory)
        phases = [{"name": phase["name"], "test_accuracy": phase["test_accuracy"],
                   "test_self_consistency_accuracy": phase["test_self_consistency_accuracy"],
                   "validation_accuracy": phase["validation_accuracy"], "pairs": phase["pairs"]}
                  for phase in summary["phases"]]
        for index, phase in enumerate(phases):
            phase_dir = layout.iteration_dir(directory, index) if index else layout.sft_dir(directory)
            predictions = os.path.join(phase_dir, "test", "predictions_test.jsonl")
            phase["chain_checks"] = (study_errors.check_predictions(predictions, world)
                                     if os.path.exists(predictions) else None)
            if index:
                phase["training"] = iteration_training(directory, index)
                phase["pair_checks"] = study_errors.check_pairs(os.path.join(phase_dir, "pairs"), world)
        cells.append({"name": cell.name, "stage_type": cell.stage_type, "pair_type": cell.pair_type,
                      "seed": cell.seed, "directory": os.path.relpath(directory, out), "phases": phases,
                      "wall_seconds": summary["wall_seconds"], "model": summary["config"]["model"]})
    return {"settings": settings, "cells": cells, "stage_types": _stage_types(cells),
            "self_reflection": _self_reflection(cells, grid.iterations),
            "self_consistency": _self_consistency(cells, grid.num_chains), "chain_checks": _chain_checks(cells)}


def _spread(values: Sequence[float]) -> dict[str, Any]:
    return {"values": list(values), "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None}


def _paired(values: dict[int, float], reference: dict[int, float]) -> dict[str, Any]:
    """`values` minus `reference` on the seeds both have: the differences' spread and the seeds ahead."""
    seeds = sorted(set(values) & set(reference))
    differences = [values[seed] - reference[seed] for seed in seeds]
    return {**_spread(differences), "seeds": seeds, "ahead": sum(d > 0 for d in differences),
            "behind": sum(d < 0 for d in differences)}


def _test_accuracy(cells: list[dict], name: str, phase: int = 0,
                   key: str = "test_accuracy") -> dict[int, float]:
    """Per seed, the test accuracy of phase `phase` of the cells called `name`."""
    return {cell["seed"]: cell["phases"][phase][key] for cell in cells
            if cell["name"] == name and len(cell["phases"]) > phase and cell["phases"][phase][key] is not None}


def _stage_types(cells: list[dict]) -> dict[str, Any]:
    """Claim 1: phase 1 of the full chain against its ablations."""
    full = _test_accuracy(cells, "full")
    return {stage_type: {**_spread(list(_test_accuracy(cells, stage_type).values())),
                         "minus_full": _paired(_test_accuracy(cells, stage_type), full)}
            for stage_type in formats.STAGE_TYPES}


PAIR_CHECKS = {"recall": ("chosen_right", "rejected_right", "same_texts"),
               "analyze": ("chosen_right", "rejected_right", "same_texts", "chosen_fits")}


def _self_reflection(cells: list[dict], iterations: int) -> dict[str, Any]:
    """Claims 2 and 3: each DPO variant's iterations against phase 1 and against DPO on both kinds of pairs."""
    phase_one = _test_accuracy(cells, "full")
    both = study.Cell("full", "recall_analyze", 0).name
    variants = {}
    for pair_type in study.PAIR_TYPES:
        name = study.Cell("full", pair_type, 0).name
        rows = []
        for iteration in range(1, iterations + 1):
            accuracy = _test_accuracy(cells, name, iteration)
            trained = [cell["phases"][iteration] for cell in cells
                       if cell["name"] == name and len(cell["phases"]) > iteration]
            rows.append({
                "iteration": iteration, **_spread(list(accuracy.values())),
                "minus_phase_one": _paired(accuracy, phase_one),
                "minus_both_pairs": _paired(accuracy, _test_accuracy(cells, both, iteration)),
                # Only the kinds of pairs the variant trains on (an iteration counts every kind it sampled).
                "pairs": {stage: _spread([phase["pairs"][stage] for phase in trained
                                          if phase["pairs"] and stage in phase["pairs"]])["mean"]
                          for stage in PAIR_STAGE_TYPES[pair_type]},
                "training": {key: _spread([phase["training"][key] for phase in trained
                                           if phase["training"][key] is not None])["mean"]
                             for key in ("first_dpo_loss", "last_dpo_loss", "last_reward_accuracy")},
                "pair_checks": {stage: {key: _spread([phase["pair_checks"][stage][key] for phase in trained
                                                      if phase["pair_checks"][stage][key] is not None])["mean"]
                                        for key in PAIR_CHECKS[stage]}
                                for stage in PAIR_STAGE_TYPES[pair_type]}})
        variants[pair_type] = rows
    return {"phase_one": _spread(list(phase_one.values())), "variants": variants}


def _self_consistency(cells: list[dict], num_chains: int) -> dict[str, Any]:
    """Claim 4: a vote of `num_chains` sampled chains against one greedy chain, per phase of the full method."""
    name = study.Cell("full", "recall_analyze", 0).name
    phases = max((len(cell["phases"]) for cell in cells if cell["name"] == name), default=1)
    rows = []
    for phase in range(phases):
        source = "full" if phase == 0 else name
        greedy = _test_accuracy(cells, source, phase)
        voted = _test_accuracy(cells, source, phase, "test_self_consistency_accuracy")
        rows.append({"phase": "sft" if phase == 0 else layout.iteration_name(phase),
                     "greedy": _spread(list(greedy.values())), "vote": _spread(list(voted.values())),
                     "vote_minus_greedy": _paired(voted, greedy)})
    return {"num_chains": num_chains, "phases": rows}


CHECKED = (*study_errors.CHECKS, "correct_when_verdicts_right", "correct_when_verdicts_wrong")


def _chain_checks(cells: list[dict]) -> list[dict[str, Any]]:
    """Where the errors are: per setting and phase (phase 1 of every stage type, then each DPO variant's
    iterations), the shares of greedy test chains that pass each stage's check, averaged over seeds."""
    names = [*formats.STAGE_TYPES, *(study.Cell("full", pair_type, 0).name for pair_type in study.PAIR_TYPES)]
    rows = []
    for name in names:
        same = [cell for cell in cells if cell["name"] == name]
        for phase in range(0 if name in formats.STAGE_TYPES else 1, max((len(c["phases"]) for c in same), default=0)):
            checks = [cell["phases"][phase]["chain_checks"] for cell in same
                      if len(cell["phases"]) > phase and cell["phases"][phase]["chain_checks"] is not None]
            rows.append({"setting": name, "phase": "sft" if phase == 0 else layout.iteration_name(phase),
                         "seeds": len(checks), **{key: _spread([c[key] for c in checks if c[key] is not None])["mean"]
                                                  for key in CHECKED}})
    return rows


# --- study.md ----------------------------------------------------------------------------------------


def _mean_std(spread: dict[str, Any]) -> str:
    if spread["mean"] is None:
        return report.MISSING
    std = "" if spread["std"] is None else f" ± {100 * spread['std']:.1f}"
    return f"{100 * spread['mean']:.1f}%{std}"


def _difference(paired: dict[str, Any]) -> str:
    if paired["mean"] is None:
        return report.MISSING
    std = "" if paired["std"] is None else f" ± {100 * paired['std']:.1f}"
    return (f"{100 * paired['mean']:+.1f}{std} points (ahead on {paired['ahead']}, behind on {paired['behind']} "
            f"of {len(paired['seeds'])} seeds)")


def _share(value: Optional[float]) -> str:
    return report.MISSING if value is None else f"{100 * value:.1f}%"


def _count(value: Optional[float]) -> str:
    return report.MISSING if value is None else f"{value:,.0f}"


def _number(value: Optional[float], digits: int = 3) -> str:
    return report.MISSING if value is None else f"{value:.{digits}g}"


def render_markdown(summary: dict[str, Any]) -> str:
    """`study.md`: the setting, then one table per claim."""
    settings = summary["settings"]
    world, grid = settings["world_settings"], settings["grid_settings"]
    models = sorted({cell["model"] for cell in summary["cells"]})
    lines = [
        "# TinyThinker study on the toy world", "",
        f"Grid `{settings['grid']}`: seeds {grid['seeds']}, {grid['iterations']} self-reflection iteration(s) per "
        f"DPO variant, self-consistency over {grid['num_chains']} chains; model {', '.join(models) or '-'}; "
        f"extra bindings {settings['bindings'] or 'none'}.", "",
        f"World `{settings['world']}` ({world['dataset']}, world seed {world['seed']}, {world['num_samples']} "
        f"teacher rationales per question, teacher noise {world['teacher_noise']:g}): {world['reason']}", "",
        f"{len(summary['cells'])} cells finished. Accuracies are on the test split: mean ± standard deviation over "
        "seeds; differences are paired by seed.", "",
        "## 1. The full chain against its ablations (phase 1)", "",
        report.markdown_table(("stage type", "test accuracy", "minus full"),
                      [[stage_type, _mean_std(row), _difference(row["minus_full"])]
                       for stage_type, row in summary["stage_types"].items()]), "",
        "## 2-3. Self-reflection: iterations and pair types", "",
        f"Phase 1 (full chain): {_mean_std(summary['self_reflection']['phase_one'])}.", "",
        report.markdown_table(("DPO pairs", "iteration", "test accuracy", "minus phase 1", "minus both pairs",
                       "recall pairs", "analyze pairs", "DPO loss first -> last", "reward accuracy (last step)"),
                      [[pair_type, str(row["iteration"]), _mean_std(row), _difference(row["minus_phase_one"]),
                        _difference(row["minus_both_pairs"]) if pair_type != "recall_analyze" else "",
                        _count(row["pairs"].get("recall")), _count(row["pairs"].get("analyze")),
                        f"{_number(row['training']['first_dpo_loss'])} -> "
                        f"{_number(row['training']['last_dpo_loss'])}",
                        _number(row["training"]["last_reward_accuracy"])]
                       for pair_type, rows in summary["self_reflection"]["variants"].items() for row in rows]), "",
        "Pairs are the kinds each variant trains on, per iteration, averaged over seeds (an iteration without "
        "pairs does not train); the DPO loss and reward accuracy are those of the iteration's first and last "
        "logged steps (each logged value averages the steps since the one before).", "",
        "The same pairs checked against the world's facts (`study_errors`): the share whose chosen and whose "
        "rejected text is right (a recall that states the true value, an analysis whose verdict on its option is "
        "right), the share whose two texts are the same, which DPO cannot learn from (the official rules keep "
        "them), and the share of analyze pairs whose chosen analysis says its option fits.", "",
        report.markdown_table(("DPO pairs", "iteration", "recall: chosen right", "recall: rejected right",
                               "analyze: chosen right", "analyze: rejected right", "analyze: same texts",
                               "analyze: chosen says fits"),
                              [[pair_type, str(row["iteration"]),
                                *(_share(row["pair_checks"].get(stage, {}).get(key))
                                  for stage, key in (("recall", "chosen_right"), ("recall", "rejected_right"),
                                                     ("analyze", "chosen_right"), ("analyze", "rejected_right"),
                                                     ("analyze", "same_texts"), ("analyze", "chosen_fits")))]
                               for pair_type, rows in summary["self_reflection"]["variants"].items()
                               for row in rows]), "",
        f"## 4. Self-consistency ({summary['self_consistency']['num_chains']} chains) against one greedy chain", "",
        report.markdown_table(("phase", "greedy", "vote", "vote minus greedy"),
                      [[row["phase"], _mean_std(row["greedy"]), _mean_std(row["vote"]),
                        _difference(row["vote_minus_greedy"])] for row in summary["self_consistency"]["phases"]]),
        "", "## 5. Where the errors are", "",
        report.markdown_table(("setting", "phase", "recall: own category", "recall: true value",
                               "analysis verdicts right", "accepts a wrong option", "rejects a right option",
                               "answer right", "answer right when verdicts right", "answer right when verdicts wrong"),
                              [[row["setting"], row["phase"], *(_share(row[key]) for key in CHECKED)]
                               for row in summary["chain_checks"]]), "",
        "Each greedy test chain checked against the world's facts (`study_errors`), as shares of the test questions "
        "averaged over seeds: the recall names the entity's own category (a noisy teacher's rationales name "
        "another), the recall states the attribute's true value (what the answer needs), every option's analysis "
        "fits exactly when the option fits the facts (else it accepts an option that does not fit, such as a "
        "false yes/no claim, or rejects one that does, or both), and the answer; then the answer's accuracy "
        "among the chains whose verdicts are right and among those whose verdicts are wrong. A stage the setting "
        "lacks shows "
        f"{report.MISSING}.", "",
        f"![test accuracy]({STUDY_PLOT})", ""]
    return "\n".join(lines)


def write_plot(summary: dict[str, Any], path: str) -> None:
    """Left: phase-1 test accuracy per stage type; right: test accuracy per iteration for each DPO variant
    (error bars: the standard deviation over seeds)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    figure = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    stages, iterations = figure.subplots(1, 2)
    names = list(summary["stage_types"])
    rows = [summary["stage_types"][name] for name in names]
    stages.bar(range(len(names)), [row["mean"] or 0.0 for row in rows], yerr=[row["std"] or 0.0 for row in rows])
    stages.set_xticks(range(len(names)), names, rotation=15)
    stages.set_title("phase 1: stage types")
    phase_one = summary["self_reflection"]["phase_one"]
    for pair_type, variant in summary["self_reflection"]["variants"].items():
        points = [(0, phase_one)] + [(row["iteration"], row) for row in variant]
        points = [(x, spread) for x, spread in points if spread["mean"] is not None]
        if points:
            iterations.errorbar([x for x, _ in points], [spread["mean"] for _, spread in points],
                                yerr=[spread["std"] or 0.0 for _, spread in points], marker="o", capsize=3,
                                label=f"DPO on {pair_type.replace('_', ' + ')}")
    iterations.set_xlabel("self-reflection iteration (0: phase 1)")
    iterations.xaxis.set_major_locator(MaxNLocator(integer=True))
    iterations.set_title("phase 2: DPO variants")
    if iterations.get_legend_handles_labels()[0]:
        iterations.legend()
    for axes in (stages, iterations):
        axes.set_ylabel("test accuracy")
        axes.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    report.write_atomically(path, lambda tmp: figure.savefig(tmp, format="png"))


def write_study_report(out: str) -> dict[str, Any]:
    """Writes `study.json`, `study.md` and `study.png` into `out`; returns the summary."""
    summary = summarize_study(out)
    write_plot(summary, os.path.join(out, STUDY_PLOT))
    records.write_json(os.path.join(out, STUDY_JSON), summary)
    report.write_text(os.path.join(out, STUDY_MD), render_markdown(summary))
    return summary
