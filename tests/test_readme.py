"""The README's shell commands stay true: every fenced bash block is read and each
`python FILE.py` must exist, each `python -m MODULE` must be importable (found, not run),
each `--config=FILE[:ARG]` must load, and each `--config.KEY=VALUE` must name a field of
that config (or, where the README elides the config with `...`, of some config). Nothing is
trained here; the smoke variants of the commands run in the tests of train.py and the configs.
"""

import functools
import importlib.util
import pathlib
import re
import shlex

import pytest
from ml_collections import ConfigDict

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SEPARATORS = {"&&", "||", ";", "|"}


def bash_blocks(text: str) -> list[tuple[int, str]]:
    """`(first line number, body)` of each fenced bash block; indented fences included."""
    blocks, body, start = [], None, 0
    for number, line in enumerate(text.splitlines(), start=1):
        if body is None and re.fullmatch(r"\s*```bash\s*", line):
            body, start = [], number + 1
        elif body is not None and re.fullmatch(r"\s*```\s*", line):
            blocks.append((start, "\n".join(body)))
            body = None
        elif body is not None:
            body.append(line)
    assert body is None, f"README.md:{start}: unterminated bash block"
    return blocks


def commands(shell: str) -> list[list[str]]:
    """The simple commands of a shell text, as token lists (continuations joined, comments
    dropped); a `--command="..."` argument (ssh, gcloud) is read as shell text too."""
    out, pending = [], ""
    for line in shell.replace("\\\n", " ").splitlines():
        try:
            tokens = shlex.split(pending + line, comments=True)
        except ValueError:  # a quoted string goes on over the next line
            pending += line + "\n"
            continue
        pending, current = "", []
        for token in tokens:
            if token in SEPARATORS:
                out.append(current)
                current = []
            elif token.startswith("--command="):
                out += commands(token.removeprefix("--command="))
            else:
                current.append(token)
        out.append(current)
    assert not pending, f"unterminated quote in {pending!r}"
    return [c for c in out if c]


@functools.cache
def load_config(spec: str) -> ConfigDict:
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location(
        f"readme_config_{pathlib.Path(path).stem}", REPO / path
    )
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def all_configs() -> list[str]:
    return sorted(f"configs/{p.name}" for p in (REPO / "configs").glob("[!_]*.py"))


def has_key(config: ConfigDict, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if not isinstance(node, (ConfigDict, dict)) or part not in node:
            return False
        node = node[part]
    return True


def problems_of(command: list[str]) -> list[str]:
    """What is wrong with one command's python invocation and config flags."""
    problems = []
    if "python" in command:
        rest = command[command.index("python") + 1 :]
        if rest[:1] == ["-m"]:
            if importlib.util.find_spec(rest[1]) is None:
                problems.append(f"python -m {rest[1]}: no such module")
        elif rest and rest[0].endswith(".py") and not (REPO / rest[0]).is_file():
            problems.append(f"python {rest[0]}: no such file")
    config_files = [t.split("=", 1)[1] for t in command if t.startswith("--config=")]
    keys = [t.split("=", 1)[0].removeprefix("--config.") for t in command]
    keys = [k for k, t in zip(keys, command, strict=True) if t.startswith("--config.")]
    if config_files and config_files[0] != "...":
        spec = config_files[0]
        if not (REPO / spec.partition(":")[0]).is_file():
            return problems + [f"--config={spec}: no such file"]
        config = load_config(spec)
        problems += [f"--config.{k}: not a field of {spec}" for k in keys if not has_key(config, k)]
    else:  # a fragment, or a command whose config the README elides: some config must fit
        configs = [load_config(c) for c in all_configs()]
        problems += [
            f"--config.{k}: not a field of any config"
            for k in keys
            if not any(has_key(c, k) for c in configs)
        ]
    return problems


BLOCKS = bash_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_the_main_commands():
    text = "\n".join(body for _, body in BLOCKS)
    for expected in (
        "python train.py --config=configs/clip_small.py",
        "python -m jaxmm.data.export",
        "--config.data.name=coco_caption_files",
    ):
        assert expected in text, expected


@pytest.mark.parametrize("start,body", BLOCKS, ids=[f"line{start}" for start, _ in BLOCKS])
def test_bash_block_commands_exist(start, body):
    problems = [
        f"README.md:{start}: {problem}" for c in commands(body) for problem in problems_of(c)
    ]
    assert not problems, "\n".join(problems)


def test_checker_catches_what_it_should():
    """The checks themselves: each kind of mistake is reported."""
    bad = """python train.py --config=configs/clip_small.py --config.optim.lerning_rate=1 \\
    --config.data.builder_kwargs.path=x
python -m jaxmm.no_such_module --help && python no_such_script.py
python train.py --config=configs/no_such.py
--config.no_such_section.x=1
"""
    problems = [p for c in commands(bad) for p in problems_of(c)]
    assert problems == [
        "--config.optim.lerning_rate: not a field of configs/clip_small.py",
        "--config.data.builder_kwargs.path: not a field of configs/clip_small.py",
        "python -m jaxmm.no_such_module: no such module",
        "python no_such_script.py: no such file",
        "--config=configs/no_such.py: no such file",
        "--config.no_such_section.x: not a field of any config",
    ]
    # `:smoke` is honoured: the smoke config is the one checked.
    assert load_config("configs/clip_small.py:smoke").batch_size == 16
