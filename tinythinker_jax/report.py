"""The results report of a pipeline run, and one table comparing several runs.

A run directory holds `pipeline.json`, which the pipeline rewrites as it goes: an unfinished run has
fewer phases, and any value may be null or missing. `write_report` turns it into three files beside it:
`report.json` (a normalised summary, so other tools need not know the pipeline's layout), `report.md`
(for people) and `accuracy.png` (accuracy across phases). Missing values are shown as "—", never
guessed; a file that is not what the pipeline writes raises DataError naming the file and the field.
"""

import json
import math
import os
from typing import Any, Callable, Iterable, Sequence

from tinythinker_jax.data.records import DataError, JsonFields, write_json

PIPELINE_FILE = "pipeline.json"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOT_FILE = "accuracy.png"
MISSING = "—"

# Known keys are always listed (as "—" while unset) so that reports of different runs line up;
# any other keys the pipeline writes follow them.
_CONFIG_KEYS = ("dataset", "model", "stage_type", "reflect_stage_type", "num_options")
_SFT_KEYS = ("batch_size", "learning_rate", "epochs", "interval")
_REFLECT_KEYS = ("iterations", "batch_size", "learning_rate", "beta", "alpha", "num_samples", "temperature", "rounds")
_ACCURACY_KEYS = ("validation_accuracy", "test_accuracy", "test_self_consistency_accuracy")
_SFT_PHASE = "sft"
_DATA_STATS_KEYS = ("examples", "max_input_tokens", "max_target_tokens", "input_length", "target_length",
                    "examples_cut", "tokens_cut")


# --- Reading pipeline.json ---------------------------------------------------------------------------


def summarize(run_dir: str) -> dict[str, Any]:
    """Reads and checks RUN_DIR/pipeline.json; returns the normalised summary that report.json holds."""
    path = os.path.join(run_dir, PIPELINE_FILE)
    fields = JsonFields(_load_json(path), path, None)
    config = _config(_section(fields, "config"))
    phases = _phases(fields)
    chance = None if config["num_options"] is None else 1 / config["num_options"]
    sft = next((phase for phase in phases if phase["name"] == _SFT_PHASE), {})
    tested = [phase for phase in phases if phase["test_accuracy"] is not None]
    final = tested[-1] if tested else {}  # an unfinished run's latest tested phase
    validations = [phase["validation_accuracy"] for phase in phases if phase["validation_accuracy"] is not None]
    return {
        "run": os.path.basename(os.path.abspath(run_dir)),
        "config": config,
        "data": _data(_section(fields, "data"), phases),
        "phases": phases,
        "num_iterations": sum(phase["name"] != _SFT_PHASE for phase in phases),
        "chance_accuracy": chance,
        "phase1_test_accuracy": sft.get("test_accuracy"),
        "phase1_margin_over_chance": _margin(sft.get("test_accuracy"), chance),
        "final_phase": final.get("name"),
        "final_test_accuracy": final.get("test_accuracy"),
        "final_margin_over_chance": _margin(final.get("test_accuracy"), chance),
        "best_validation_accuracy": max(validations, default=None),
        "wall_seconds": _optional(fields, "wall_seconds", float),
    }


def _load_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(path, None, None, "not found: is this a pipeline run directory?") from None
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, None, f"not valid JSON ({e.msg} at column {e.colno})") from None


def _optional(fields: JsonFields, key: str, kind: type) -> Any:
    """A field that may be missing or null while a run is in progress: None then, else checked as `kind`."""
    value = fields.obj.get(key)
    if value is None:
        return None
    if kind not in (int, float):
        return fields.get(key, kind)
    if isinstance(value, bool) or not isinstance(value, int if kind is int else (int, float)):
        raise fields.error(key, f"expected {'an integer' if kind is int else 'a number'}, got {json.dumps(value)[:60]}")
    if not math.isfinite(value):
        raise fields.error(key, f"expected a finite number, got {value}")  # report.json must stay valid JSON
    return value


def _section(fields: JsonFields, key: str) -> JsonFields:
    """A sub-object that may be missing or null: an empty one then, so all its fields read as missing."""
    if _optional(fields, key, dict) is None:
        return JsonFields({}, fields.path, fields.line, fields.name(key))
    return fields.child(key)


def _number_map(fields: JsonFields, key: str, kind: type) -> dict[str, Any] | None:
    """A {name: number} object, such as pairs per stage; None while missing."""
    if _optional(fields, key, dict) is None:
        return None
    child = fields.child(key)
    return {name: _optional(child, name, kind) for name in child.obj}


def _keys(known: Sequence[str], present: Iterable[str]) -> list[str]:
    return list(known) + [key for key in present if key not in known]


def _config(fields: JsonFields) -> dict[str, Any]:
    config = {key: _optional(fields, key, str) for key in _CONFIG_KEYS if key != "num_options"}
    config["num_options"] = _optional(fields, "num_options", int)
    if config["num_options"] is not None and config["num_options"] < 2:
        raise fields.error("num_options", f"expected at least 2 options, got {config['num_options']}")
    # Hyperparameters and other keys are only displayed, so any JSON value will do.
    for key, value in fields.obj.items():
        if key not in config and key not in ("sft", "reflect"):
            config[key] = value
    for key, known in (("sft", _SFT_KEYS), ("reflect", _REFLECT_KEYS)):
        section = _section(fields, key).obj
        config[key] = {name: section.get(name) for name in _keys(known, section)}
    return config


def _phases(fields: JsonFields) -> list[dict[str, Any]]:
    items = _optional(fields, "phases", list) or []
    return [_phase(fields.child("phases", index), index) for index in range(len(items))]


def _phase(fields: JsonFields, index: int) -> dict[str, Any]:
    phase: dict[str, Any] = {"name": _optional(fields, "name", str) or f"phase_{index + 1}"}
    for key in _ACCURACY_KEYS:
        phase[key] = _optional(fields, key, float)
        if phase[key] is not None and not 0 <= phase[key] <= 1:
            raise fields.error(key, f"expected a fraction between 0 and 1, got {phase[key]}")
    phase["wall_seconds"] = _optional(fields, "wall_seconds", float)
    phase["best_step"] = _optional(fields, "best_step", int)
    phase["pairs"] = _number_map(fields, "pairs", int)
    phase["wall_seconds_by_step"] = _number_map(fields, "wall_seconds_by_step", float)
    phase["data_stats"] = _data_stats(fields)
    return phase


def _data_stats(fields: JsonFields) -> dict[str, dict[str, Any]] | None:
    """A phase's `data_stats.json` (per stream: sizes and what an explicit length cut); None while missing."""
    if _optional(fields, "data_stats", dict) is None:
        return None
    streams = fields.child("data_stats")
    return {name: {key: _optional(streams.child(name), key, int) for key in _DATA_STATS_KEYS}
            for name in streams.obj}


def _data(fields: JsonFields, phases: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "teacher_records": _optional(fields, "teacher_records", int),
        "stage_examples": _number_map(fields, "stage_examples", int),
        "pairs": {phase["name"]: phase["pairs"] for phase in phases if phase["name"] != _SFT_PHASE},
    }


def _margin(accuracy: float | None, chance: float | None) -> float | None:
    """Accuracy above chance, as a fraction; rounded so report.json does not show float noise."""
    return None if accuracy is None or chance is None else round(accuracy - chance, 6)


# --- Formatting --------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (str, int)):
        text = str(value)
    else:
        text = json.dumps(value, ensure_ascii=False)
    return text.replace("|", "\\|")  # a pipe would split the markdown cell


def _percent(fraction: float | None) -> str:
    return MISSING if fraction is None else f"{100 * fraction:.1f}%"


def _points(margin: float | None) -> str:
    return MISSING if margin is None else f"{100 * margin:+.1f} points"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table of `header` and `rows` (cells already formatted)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --- report.md ---------------------------------------------------------------------------------------


def render_markdown(summary: dict[str, Any]) -> str:
    """The whole report.md of one run."""
    config = summary["config"]
    sections = [
        f"# {_cell(config['dataset'])} · {_cell(config['model'])}",
        f"TinyThinker pipeline run `{summary['run']}`.",
        "## Configuration\n\n" + _config_table(config),
        "## Data\n\n" + _data_table(summary["data"]) + _pairs_section(summary["data"]["pairs"])
        + _lengths_section(summary["phases"]),
        "## Accuracy\n\n" + _accuracy_table(summary["phases"]),
        _headline(summary),
        f"Total wall time: {_duration(summary['wall_seconds'])}.",
        f"![accuracy]({PLOT_FILE})",
    ]
    return "\n\n".join(sections) + "\n"


def _config_table(config: dict[str, Any]) -> str:
    rows = [(key, _cell(value)) for key, value in config.items() if key not in ("sft", "reflect")]
    for section in ("sft", "reflect"):
        rows += [(f"{section}.{key}", _cell(value)) for key, value in config[section].items()]
    return markdown_table(("setting", "value"), rows)


def _data_table(data: dict[str, Any]) -> str:
    rows = [("teacher records", _cell(data["teacher_records"]))]
    if data["stage_examples"] is None:
        rows.append(("stage examples", MISSING))
    else:
        rows += [(f"{stage} examples", _cell(count)) for stage, count in data["stage_examples"].items()]
    return markdown_table(("data", "count"), rows)


def _pairs_section(pairs: dict[str, dict[str, int] | None]) -> str:
    """Preference pairs per self-reflection iteration, one column per stage; nothing before phase 2."""
    if not pairs:
        return ""
    stages = list(dict.fromkeys(stage for counts in pairs.values() for stage in counts or {}))
    rows = [[name, *_pair_cells(counts, stages)] for name, counts in pairs.items()]
    return "\n\nPreference pairs per iteration:\n\n" + markdown_table(["iteration", *stages, "total"], rows)


def _pair_cells(counts: dict[str, int] | None, stages: list[str]) -> list[str]:
    if counts is None:  # the iteration has not made its pairs yet
        return [MISSING] * (len(stages) + 1)
    known = [counts.get(stage) for stage in stages]
    return [_cell(count) for count in known] + [_cell(sum(count for count in known if count is not None))]


def _lengths_section(phases: list[dict[str, Any]]) -> str:
    """Each phase's streams as trained: the longest example, the padded width and what was cut (0 unless an
    explicit TASK_FEATURE_LENGTHS was shorter than the data)."""
    rows = [[phase["name"], stream, *(_cell(entry[key]) for key in _DATA_STATS_KEYS)]
            for phase in phases for stream, entry in (phase["data_stats"] or {}).items()]
    if not rows:
        return ""
    header = ["phase", "stream", "examples", "longest input", "longest target", "input width", "target width",
              "examples cut", "tokens cut"]
    return "\n\nLengths in tokens (`data_stats.json`):\n\n" + markdown_table(header, rows)


def _accuracy_table(phases: list[dict[str, Any]]) -> str:
    header = ("phase", "validation", "test", "test (self-consistency)", "best step", "wall time")
    rows = [
        [phase["name"], *(_percent(phase[key]) for key in _ACCURACY_KEYS), _cell(phase["best_step"]),
         _wall_time(phase)]
        for phase in phases
    ]
    return markdown_table(header, rows) if rows else "No phase has finished yet."


def _wall_time(phase: dict[str, Any]) -> str:
    steps = phase["wall_seconds_by_step"]
    if not steps:
        return _duration(phase["wall_seconds"])
    detail = ", ".join(f"{step} {_duration(seconds)}" for step, seconds in steps.items())
    return f"{_duration(phase['wall_seconds'])} ({detail})"


def _headline(summary: dict[str, Any]) -> str:
    """Chance accuracy and how far phase 1 and the final phase are above it: the figures to quote."""
    options = summary["config"]["num_options"]
    chance = f"{_percent(summary['chance_accuracy'])} (1 in {options} options)" if options else MISSING
    return (
        f"Chance: {chance}. "
        f"Test accuracy after phase 1 (SFT): {_percent(summary['phase1_test_accuracy'])}, "
        f"{_points(summary['phase1_margin_over_chance'])} over chance. "
        f"Final ({_cell(summary['final_phase'])}): {_percent(summary['final_test_accuracy'])}, "
        f"{_points(summary['final_margin_over_chance'])} over chance."
    )


# --- accuracy.png ------------------------------------------------------------------------------------


def write_plot(summary: dict[str, Any], path: str) -> None:
    """Validation and test accuracy per phase, with a dashed chance line when the option count is known."""
    # The object-oriented API renders with Agg without pyplot, so it neither needs a display nor changes
    # the backend of a caller's session (a notebook); imported here so `tinythinker --help` stays fast.
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    phases = summary["phases"]
    figure = Figure(figsize=(6, 4), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    values = []
    for key, label, marker in (("validation_accuracy", "validation", "o"), ("test_accuracy", "test", "s")):
        points = [(index, phase[key]) for index, phase in enumerate(phases) if phase[key] is not None]
        if points:
            axes.plot(*zip(*points), marker=marker, label=label)
            values += [value for _, value in points]
    if summary["chance_accuracy"] is not None:
        options = summary["config"]["num_options"]
        axes.axhline(summary["chance_accuracy"], linestyle="--", color="gray", label=f"chance (1/{options})")
        values.append(summary["chance_accuracy"])
    if values:
        axes.set_ylim(max(0.0, min(values) - 0.05), min(1.0, max(values) + 0.05))
    axes.set_xticks(range(len(phases)), [phase["name"] for phase in phases])
    axes.set_xlim(-0.5, max(len(phases), 1) - 0.5)  # room around the first and last phase's points
    axes.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    axes.set_xlabel("phase")
    axes.set_ylabel("accuracy")
    axes.set_title(f"{_cell(summary['config']['dataset'])} · {_cell(summary['config']['model'])}")
    if axes.get_legend_handles_labels()[0]:
        axes.legend()
    write_atomically(path, lambda tmp: figure.savefig(tmp, format="png"))


# --- Writing -----------------------------------------------------------------------------------------


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """Like records.write_json: readers see the old file or the whole new one, never a torn one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    """Writes a text file atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    write_atomically(path, write)


def write_report(run_dir: str) -> dict[str, Any]:
    """Writes report.json, report.md and accuracy.png into RUN_DIR from its pipeline.json; returns the summary."""
    summary = summarize(run_dir)
    write_plot(summary, os.path.join(run_dir, PLOT_FILE))  # first: report.md links to it
    write_json(os.path.join(run_dir, REPORT_JSON), summary)
    write_text(os.path.join(run_dir, REPORT_MD), render_markdown(summary))
    return summary


# --- Comparing runs ----------------------------------------------------------------------------------


_COMPARE_HEADER = (
    "run", "dataset", "model", "stage types (SFT / reflect)", "phase-1 test", "final test", "best validation",
    "iterations", "wall time",
)


def compare(run_dirs: Sequence[str]) -> str:
    """One markdown table, a row per run, named by the directory as given (base names may repeat)."""
    return markdown_table(_COMPARE_HEADER, [_compare_row(os.path.normpath(d), summarize(d)) for d in run_dirs])


def _compare_row(name: str, summary: dict[str, Any]) -> list[str]:
    config = summary["config"]
    return [
        _cell(name), _cell(config["dataset"]), _cell(config["model"]),
        f"{_cell(config['stage_type'])} / {_cell(config['reflect_stage_type'])}",
        _percent(summary["phase1_test_accuracy"]), _percent(summary["final_test_accuracy"]),
        _percent(summary["best_validation_accuracy"]), _iterations(summary), _duration(summary["wall_seconds"]),
    ]


def _iterations(summary: dict[str, Any]) -> str:
    """Iterations done; "1 of 2" while a run has more to go."""
    planned = summary["config"]["reflect"].get("iterations")
    done = summary["num_iterations"]
    if isinstance(planned, int) and not isinstance(planned, bool) and planned > done:
        return f"{done} of {planned}"
    return str(done)
