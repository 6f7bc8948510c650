"""What every jaxmm command shares: exit status 0 on success, one line on bad input.

absl commands (`train.py`, `python -m jaxmm.evaluate`) start with `run(main)` instead of
`app.run(main)`; argparse commands wrap their work in `with one_line_errors():`. Then

- a mistake on the command line is one line on stderr, not a traceback: a config file
  that does not exist (with the closest file of that folder), a `--config.FIELD` the
  config does not have (with the closest field), a value of the wrong type, an error
  raised by the config file's `get_config`, any other flag error absl reports;
- an error that bad input causes while the command runs (a missing file, a value out of
  range, an unknown name: `ValueError`, `KeyError`, `OSError`, `ImportError`, plus what the
  command adds) is one line `error: ...` and exit status 1;
- anything else is a bug and keeps its traceback. `JAXMM_TRACEBACK=1` shows the traceback
  of the one-line errors too.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import pathlib
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from absl import app, flags
from ml_collections import ConfigDict
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

# Exceptions that mean bad input (a path, a value, a name, a missing optional package)
# rather than a bug.
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError, ImportError)
_HELP_FLAGS = ("--help", "-help", "-?", "--helpshort", "-helpshort", "--helpfull", "-helpfull")


def run(main: Callable[[list[str]], Any], errors: Sequence[type[BaseException]] = ()) -> None:
    """`absl.app.run(main)` with one-line errors and exit status 0 when `main` returns.

    `main`'s return value is not an exit status (absl's convention): `jaxmm.evaluate`'s main
    returns its metrics to callers that import it.

    Args:
        main: the command, called with the arguments left after the flags.
        errors: exception types, besides `INPUT_ERRORS`, that bad input can cause.
    """

    def main_exiting_0(argv: list[str]) -> None:
        with one_line_errors((app.UsageError, *errors)):
            main(argv)

    app.run(main_exiting_0, flags_parser=parse_flags)


@contextlib.contextmanager
def one_line_errors(errors: Sequence[type[BaseException]] = ()) -> Iterator[None]:
    """Turns `INPUT_ERRORS` and `errors` raised inside into `error: ...` on stderr, exit 1."""
    try:
        yield
    except (*INPUT_ERRORS, *errors) as error:
        if os.environ.get("JAXMM_TRACEBACK"):
            raise
        sys.exit(f"error: {_message(error)}")


def _message(error: BaseException) -> str:
    # A KeyError's str() is the repr of its argument: quotes and escaped newlines.
    if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
        return error.args[0]
    return str(error) or type(error).__name__


def parse_flags(argv: list[str]) -> list[str]:
    """`absl.flags.FLAGS(argv)` whose errors end the program with one line on stderr.

    Args:
        argv: the command line, program name first.

    Returns:
        The arguments that are not flags, program name first (what `app.run` passes to main).
    """
    try:
        remaining = flags.FLAGS(argv)
        for name, _ in _config_specs(argv):
            # A config file that fails to load is an object that raises on first use.
            getattr(flags.FLAGS[name].value, "keys", None)
        return remaining
    except SystemExit:
        # absl's --help prints the help and exits with 1; asking for help is no failure.
        if any(arg in _HELP_FLAGS for arg in argv[1:]):
            sys.exit(0)
        raise
    except (flags.Error, AttributeError, KeyError, OSError) as error:
        message = describe_flag_error(error, argv)
        if message is None:
            raise
        sys.exit(f"error: {message}")


def describe_flag_error(error: BaseException, argv: Sequence[str]) -> str | None:
    """One line saying what is wrong on the command line `argv`, or None for a bug.

    Args:
        error: what parsing `argv` raised.
        argv: the command line.
    """
    specs = _config_specs(argv)
    for name, spec in specs:
        path = spec.split(":", 1)[0]
        if not os.path.isfile(path):
            return f"--{name}={spec}: no such file{_closest_file(path)}"
    text = str(error)
    if isinstance(error, (AttributeError, KeyError, flags.Error)):
        for name, spec in specs:
            if problem := _override_problem(name, spec, argv, text):
                return problem
    where = ", ".join(f"--{name}={spec}" for name, spec in specs)
    if specs and (isinstance(error, OSError) or "Error whilst parsing config file" in text):
        # The config file's get_config raised: its own message, not the traceback that
        # ml_collections folds into the flag error.
        return f"{where}: {_message(_innermost(error))}"
    if isinstance(error, flags.Error):
        return text.replace("\n", " ")
    return None


def _config_specs(argv: Sequence[str]) -> list[tuple[str, str]]:
    """`(flag name, 'path[:arg]')` of each ml_collections config flag given in `argv`."""
    specs = []
    names = [
        name for name in flags.FLAGS if isinstance(flags.FLAGS[name].parser, ConfigFileFlagParser)
    ]
    for name in names:
        for i, arg in enumerate(argv[1:], 1):
            if re.fullmatch(rf"--?{name}=.*", arg):
                specs.append((name, arg.split("=", 1)[1]))
            elif re.fullmatch(rf"--?{name}", arg) and i + 1 < len(argv):
                specs.append((name, argv[i + 1]))
    return specs


def _closest_file(path: str) -> str:
    """' (did you mean DIR/NAME.py?)' for the Python file of `path`'s folder closest to it."""
    folder = pathlib.Path(path).parent
    if not folder.is_dir():
        return f" (no folder {folder} either; config paths are relative to {os.getcwd()})"
    candidates = [str(folder / p.name) for p in folder.glob("*.py")]
    close = difflib.get_close_matches(path, candidates, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _innermost(error: BaseException) -> BaseException:
    while (inner := error.__cause__ or error.__context__) is not None:
        error = inner
    return error


def _override_problem(name: str, spec: str, argv: Sequence[str], text: str) -> str | None:
    """The first `--NAME.FIELD` override in `argv` that `spec`'s config has no field for, or
    whose value the error `text` is about, described against that config."""
    # Imported here: the config checker brings in the models and datasets, which a command
    # whose flags parse needs no earlier than it imports them itself.
    from jaxmm.train import config_check

    # Loaded again only to describe the error: the flag that failed to parse keeps nothing.
    try:
        config = ConfigFileFlagParser(name, lock_config=False).parse(spec)
        config.keys()
    except Exception:  # the config's own error is described by the caller
        return None
    if not isinstance(config, ConfigDict):
        return None
    mistyped = []  # (whether the error names the value too, message)
    for arg in argv[1:]:
        match = re.fullmatch(rf"--?(?:no)?{name}\.([^=]+)(=.*)?", arg)
        if not match:
            continue
        field, given = match.group(1), f"--{name}.{match.group(1)}{match.group(2) or ''}"
        section: Any = config
        for depth, key in enumerate(field.split(".")):
            if not isinstance(section, ConfigDict) or key not in section:
                # The config checker's hints, so the command line and config files read alike.
                prefix = "".join(f"{p}." for p in field.split(".")[:depth])
                known = dict.fromkeys(section.keys()) if isinstance(section, ConfigDict) else {}
                hint = config_check._did_you_mean(key, known, prefix) or config_check._elsewhere(
                    key, config.to_dict()
                )
                return f"{given}: {spec} has no field {field}{hint}"
            section = section[key]
        if f"flag --{name}.{field}=" in text:
            reason = text.split(": ", 1)[-1].replace("\n", " ")
            expected = f"expected {config_check._kind(section)} ({spec} has {field}={section!r})"
            mistyped.append((f"flag {given}:" in text, f"{given}: {expected}: {reason}"))
    # The override the error quotes, not an earlier one of the same field.
    return max(mistyped, key=lambda pair: pair[0])[1] if mistyped else None
