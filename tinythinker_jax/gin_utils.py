"""T5X-style gin handling: `--gin_file` (repeatable), `--gin.KEY=VALUE` bindings and search paths.

Every mistake in them is one `UserError` line naming the file or binding: gin's own errors (a file not
found, an unknown configurable or parameter, a value that does not parse), a macro bound on the command
line that no gin file uses (gin itself would ignore `--gin.TRAIN_STEP=5` and run at full length), and a
required macro left unset. `setting_name` and `require_positive` name a bad setting the way the user set it.
"""

import argparse
import contextlib
import difflib
import inspect
import logging
import os
import re
import tokenize
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import gin
from gin import config as gin_config
from gin import config_parser
from tinythinker_jax.errors import UserError

GIN_BINDING_PREFIX = "--gin."
# What gin could not parse or bind. An ImportError is a gin file's `import` of a module that is not there; a
# TokenError, an unclosed bracket at the end of a file or binding.
GIN_ERRORS = (ValueError, TypeError, SyntaxError, tokenize.TokenError, OSError, ImportError)


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
    """`--gin.KEY=VALUE` -> `--gin_bindings KEY=VALUE`, which argparse understands."""
    rewritten = []
    for arg in argv:
        if arg.startswith(GIN_BINDING_PREFIX):
            rewritten += ["--gin_bindings", arg[len(GIN_BINDING_PREFIX):]]
        else:
            rewritten.append(arg)
    return rewritten


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gin_file", action="append", default=[], help="gin file; repeat to add more")
    parser.add_argument("--gin_bindings", action="append", default=[], help="KEY=VALUE; also --gin.KEY=VALUE")
    parser.add_argument("--gin_search_paths", default=".",
                        help="comma-separated directories for gin files and includes (default: the current one); "
                             "the project's own gin/ is searched after them")


def require_gin_files(args: argparse.Namespace) -> None:
    """Refuses a gin-configured command given no `--gin_file`."""
    if not args.gin_file:
        raise UserError(f"{args.command} needs at least one --gin_file (a run gin from gin/runs/ and an experiment "
                        f"gin from gin/experiments/, as in README.md)")


def parse_gin_flags(args: argparse.Namespace, configurables: Sequence[Callable] = ()) -> None:
    """Parses a command's `--gin_file`s, then its bindings, with `--gin_search_paths`; see `parse`."""
    require_gin_files(args)
    parse(args.gin_file, args.gin_bindings, args.gin_search_paths.split(","), configurables)


def builtin_search_path() -> str:
    """The directory that holds the project's `gin/` tree, searched after `--gin_search_paths`, so that
    `--gin_file=gin/runs/sft.gin` and every `include 'gin/...'` resolve from any working directory: the
    installed package (a wheel ships `gin/` as `tinythinker_jax/gin/`) or a source checkout's root."""
    package = os.path.dirname(os.path.abspath(__file__))
    for directory in (package, os.path.dirname(package)):
        if os.path.isdir(os.path.join(directory, "gin", "runs")):
            return directory
    raise UserError(f"the project's gin files are neither in {package}/gin nor beside the package: reinstall "
                    "tinythinker-jax")


def parse(files: Sequence[str], bindings: Sequence[str], search_paths: Iterable[str] = (),
          configurables: Sequence[Callable] = ()) -> None:
    """Parses gin files, then bindings (later ones win), into a fresh, finalized gin config.

    Args:
        files: Gin files, found directly or under `search_paths`.
        bindings: `KEY = VALUE` bindings, as given by `--gin.KEY=VALUE`.
        search_paths: Directories for the files and their includes, before `builtin_search_path()`.
        configurables: The functions the command will call. Their arguments are evaluated now, so a required
            macro left unset or a value a configurable refuses stops the run here, before any work.

    Raises:
        UserError: Naming the file or binding, when gin cannot parse or bind it; naming the macro and the
            closest known ones, when a binding sets a macro that no gin file uses.
    """
    gin.clear_config()  # a fresh config per command, also when one process runs several (tests)
    search_paths = [os.path.abspath(path) for path in search_paths if path] + [builtin_search_path()]
    for path in search_paths:
        gin.add_config_file_search_path(path)
    for path in files:
        if not any(os.path.isfile(os.path.join(prefix, path)) for prefix in ("", *search_paths)):
            raise UserError(f"--gin_file {path}: not found (searched the current directory and "
                            f"{','.join(search_paths)})")
        _run(f"--gin_file {path}", gin.parse_config_file, path)
    macros = {}
    for binding in bindings:
        _run(f"--gin.{binding}", gin.parse_config, binding)
        macros.update(dict.fromkeys(_macros_bound_by(binding), binding))
    _check_macros_are_used(macros)  # first: `--gin.MODEL_DIRR=...` is the mistake, not a MODEL_DIR left unset
    _run("gin config", gin.finalize)
    for fn in configurables:
        _resolve(fn)


def is_configured(fn: Callable) -> bool:
    """Whether the parsed gin files bind any argument of `fn`."""
    try:
        return bool(gin.get_bindings(fn, resolve_references=False))
    except ValueError:  # not even registered: no gin file imports its module
        return False


def _resolve(fn: Callable) -> None:
    """Evaluates what gin will pass to `fn`, which the gin files must configure."""
    name = _configurable_name(fn)
    if not is_configured(fn):
        raise UserError(f"no --gin_file configures {name}: start with the run gin file (gin/runs/)")
    _run(f"gin settings of {name}", gin.get_bindings, fn)


def _run(where: str, step: Callable, *args) -> Any:
    try:
        with _quiet_logging():
            return step(*args)
    except GIN_ERRORS as e:
        raise UserError(f"{where}: {_gin_message(e)}") from e


@contextlib.contextmanager
def _quiet_logging():
    """Mutes gin's log lines while it parses: its file reader logs "Path not found" for an include it cannot
    find, just before the error that says so."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def _gin_message(error: Exception) -> str:
    """Gin's message on one line, without what the prefix already says or the whole config it appends."""
    if isinstance(error, SyntaxError):
        text = f" {error.text.strip()!r}" if error.text else ""
        where = f" at {error.filename}:{error.lineno}" if error.filename else ""
        return f"gin cannot parse{text}{where}: {error.msg}"
    if isinstance(error, tokenize.TokenError):
        return f"gin cannot parse it: {error.args[0]} (line {error.args[1][0]})"
    message = str(error).split(" in config string:", 1)[0]
    message = re.split(r"\s+In bindings string line \d+", message, maxsplit=1)[0]
    required = re.match(r"(\S+)/macro\.value set to `%gin.REQUIRED` but not subsequently overridden", message)
    if required:
        return f"{required.group(1)} is required: set it with --gin.{required.group(1)}=..."
    unset = re.match(r"No bindings specified for '(\S+)/gin\.macro'", message)
    if unset:
        return (f"the gin files use %{unset.group(1)} but none sets it: add the gin file that does (an experiment "
                f"gin from gin/experiments/ sets MODEL_CONFIG and MIXTURE_OR_TASK_NAME) or --gin.{unset.group(1)}=...")
    return " ".join(message.split())


def _macros_bound_by(binding: str) -> list[str]:
    """The macros a binding sets (`NAME = value` or `scope/NAME = value`), read as gin reads them."""
    parser = config_parser.ConfigParser(binding, gin_config.ParserDelegate(skip_unknown=True))
    return [f"{statement.scope}/{statement.selector}" if statement.scope else statement.selector
            for statement in parser
            if isinstance(statement, config_parser.BindingStatement) and not statement.arg_name]


def _macro_names() -> tuple[set[str], set[str]]:
    """(the macros bound, the macros referred to as `%NAME`) in the parsed config.

    Gin stores `NAME = value` as parameter `value` of its `macro` configurable in scope `NAME`, and `%NAME`
    as a reference to that configurable in that scope."""
    config = gin_config._CONFIG
    macro = gin.get_configurable(gin_config.macro)
    bound = {scope for scope, selector in config if selector == "gin.macro"}
    used = {reference.config_key[0] for reference in gin_config.iterate_references(config, to=macro)}
    return bound, used


def _check_macros_are_used(macros: Mapping[str, str]) -> None:
    bound, used = _macro_names()
    for name, binding in macros.items():
        if name in used or name.rsplit("/", 1)[-1] in used:
            continue
        close = difflib.get_close_matches(name, sorted((bound | used) - {name}), n=3)
        hint = f"did you mean {' or '.join(close)}?" if close else "check the macros the run gin files define"
        raise UserError(f"--gin.{binding}: no gin file uses the macro {name} (a macro acts only where a gin "
                        f"file refers to it as %{name}); {hint}")


def _configurable_name(fn: Callable) -> str:
    """`trainer.train`: a configurable as a gin file names it after `from <package> import <module>`."""
    return f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"


def setting_name(fn: Callable, param: str, default: Optional[str] = None) -> str:
    """How the user set `fn`'s parameter `param`, for an error message.

    Args:
        fn: A gin configurable (function or class).
        param: One of its parameters.
        default: The name when gin does not bind the parameter (e.g. the flag that sets it).

    Returns:
        The macro (`BATCH_SIZE`) when the gin config binds the parameter to one, else the binding's
        name (`trainer.train.batch_size`), or `default` when gin does not bind it at all.
    """
    try:
        value = gin.get_bindings(fn, resolve_references=False).get(param)
    except ValueError:  # not registered with gin: called directly
        value = None
    if isinstance(value, gin_config.ConfigurableReference) and value.configurable.wrapped is gin_config.macro:
        return value.config_key[0]
    if value is None and default is not None:
        return default
    return f"{_configurable_name(fn)}.{param}"


def write_config_files(model_dir: str) -> None:
    """`model_dir/config.gin` (every binding parsed) and `operative_config.gin` (those used so far), as T5X
    writes them."""
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "config.gin"), "w") as f:
        f.write(gin.config_str())
    with open(os.path.join(model_dir, "operative_config.gin"), "w") as f:
        f.write(gin.operative_config_str())


def bound_arguments(fn: Callable) -> dict[str, Any]:
    """`fn`'s keyword arguments as a call through gin would give them: its defaults, then gin's bindings."""
    defaults = {name: parameter.default for name, parameter in inspect.signature(fn).parameters.items()
                if parameter.default is not inspect.Parameter.empty}
    try:
        return {**defaults, **gin.get_bindings(fn)}
    except ValueError:  # not registered with gin
        return defaults


def require(condition: bool, fn: Callable, param: str, value: Any, expected: str) -> None:
    """Refuses a bad argument of `fn` unless `condition`, naming the setting (`setting_name`) and its value.

    Args:
        condition: Whether the value is acceptable.
        fn: The configurable the argument belongs to.
        param: The argument.
        value: Its value.
        expected: What it must be, e.g. "a positive integer".

    Raises:
        UserError: When `condition` is false.
    """
    if not condition:
        raise UserError(f"{setting_name(fn, param)} is {value!r}: it must be {expected}")


def is_int(value: Any) -> bool:
    """An int, and not a bool (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or a float, and not a bool; NaN compares false with every bound, so bounds refuse it."""
    return is_int(value) or isinstance(value, float)


def require_positive(fn: Callable, values: Mapping[str, Any], optional: Iterable[str] = ()) -> None:
    """Refuses a count or size below 1 among arguments of `fn` (e.g. steps, batch sizes, rounds).

    Args:
        fn: The configurable the arguments belong to, for `setting_name`.
        values: Argument name -> value.
        optional: Arguments that may also be None (meaning "all" or "off").
    """
    optional = set(optional)
    for param, value in values.items():
        if param in optional:
            require(value is None or is_int(value) and value >= 1, fn, param, value, "a positive integer or None")
        else:
            require(is_int(value) and value >= 1, fn, param, value, "a positive integer")


def require_non_negative(fn: Callable, param: str, value: Any, integer: bool = False) -> None:
    """Refuses a negative (or non-numeric) argument of `fn`, e.g. a temperature; `integer` asks for an int."""
    number = is_int(value) if integer else is_number(value)
    require(number and value >= 0, fn, param, value, "an integer >= 0" if integer else "a number >= 0")


def require_choice(fn: Callable, param: str, value: Any, choices: Iterable[Any]) -> None:
    """Refuses a value that is not one of `choices` (a split, a stage type), naming the setting."""
    choices = list(choices)
    require(value in choices, fn, param, value, f"one of {', '.join(map(repr, choices))}")


def require_subset(fn: Callable, param: str, values: Any, choices: Iterable[str]) -> None:
    """Refuses a collection with a value outside `choices` (e.g. the stages to sample), or a lone string."""
    choices = list(choices)
    ok = not isinstance(values, str) and isinstance(values, Iterable) and set(values) <= set(choices)
    require(ok, fn, param, values, f"a tuple of some of {', '.join(map(repr, choices))}")


def require_partitioner(partitioner: Any) -> None:
    """Refuses a ('data', 'model') mesh that the devices cannot form, as the partitioner would only once the
    data is loaded, naming the settings as the user set them (`MESH_DATA`, ... in the run gins).

    Args:
        partitioner: The run's `partitioning.Partitioner`.
    """
    import jax

    from tinythinker_jax import partitioning

    fn = partitioning.Partitioner
    data, model = partitioner.data, partitioner.model
    for param, value in (("data", data), ("model", model)):
        require(is_int(value) and (value >= 1 or value == -1), fn, param, value, "a positive integer or -1")
    require(not data == model == -1, fn, "data", data, "a positive integer when the model axis is -1")
    require_choice(fn, "parameter_partitioning_dims", partitioner.parameter_partitioning_dims, (1, 2))
    devices = len(jax.devices())
    try:
        partitioning.mesh_shape(data, model, devices)
    except ValueError as e:
        raise UserError(f"the mesh {setting_name(fn, 'data')}={data} x {setting_name(fn, 'model')}="
                        f"{model} does not use the {devices} devices there are: make the product {devices}, "
                        f"or set one axis to -1") from e
