"""The CLI's surface, without running a command: hints, ``-v`` everywhere, ``train``'s defaults.

Every ``ftspl ...`` command that the source or the README tells a user to run
exists as written.

Hints are taken from every string literal under ``ftspl/`` (f-string fields count
as one placeholder word) and from the README's inline code and indented code
blocks: a quoted ```ftspl VERB ...``` or ``'ftspl VERB ...'``, or ``: ftspl VERB ...``.
Each is checked against the click tree of the real app (``ftspl.cli.main.cli``):
the verb exists, every flag exists on that verb, and (outside docstrings, which
may name a verb in passing) the required arguments are there. The flag checks
are what catch a renamed or missing option; the argument check catches
``ftspl index add --rebuild`` without its FOLDER.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUOTED = re.compile(r"(?<![\w.])[`']+ftspl ([^`'\n]+?)[`']")
AFTER_COLON = re.compile(r": ftspl ([^`'\"\n();]+)")
PLACEHOLDER = "X"
#: a quoted command of another program ('ray start --head', `pip install ...`): its flags are not ours
OTHER_PROGRAM = re.compile(r"[`'](?!ftspl )[a-z][\w.-]* [^`'\n]*[`']")


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _strings(path: Path) -> list[tuple[str, bool]]:
    """(text, is_docstring) of every string literal; f-string fields become a placeholder word."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = _docstring_nodes(tree)
    inner = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else PLACEHOLDER for v in node.values)
            out.append((text, False))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in inner:
            out.append((node.value, id(node) in docs))
    return out


def _hints_in(text: str) -> list[str]:
    return [m.group(1).strip() for rx in (QUOTED, AFTER_COLON) for m in rx.finditer(text)]


def source_hints() -> list[tuple[str, str, bool]]:
    """(where, hint, from_docstring) for every hint under ftspl/."""
    found = []
    for path in sorted((ROOT / "ftspl").rglob("*.py")):
        for text, doc in _strings(path):
            for hint in _hints_in(text):
                found.append((str(path.relative_to(ROOT)), hint, doc))
    return found


def readme_hints() -> list[tuple[str, str, bool]]:
    """Inline ``ftspl ...`` code and indented command lines of the README (comments cut)."""
    found = []
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("    ftspl "):
            found.append(("README.md", line.split("#")[0].strip()[len("ftspl "):], False))
        for m in re.finditer(r"`ftspl ([^`]+)`", line):
            found.append(("README.md", m.group(1), True))  # inline: may name a verb in passing
    return found


def check_hint(root, hint: str, docstring: bool) -> str | None:
    """Why ``ftspl HINT`` is not a valid command line of ``root``, or None."""
    tokens = hint.split()
    if tokens and tokens[0].isupper():  # `ftspl COMMAND --help`: any verb
        return None
    cmd, verb = root, []
    while tokens and hasattr(cmd, "commands"):
        name = tokens.pop(0)
        if name.startswith("-"):  # a group's own flag (ftspl -v index add)
            if name not in _options(cmd):
                return f"'{' '.join(['ftspl', *verb])}' has no option {name}"
            continue
        if name not in cmd.commands:
            return f"no command 'ftspl {' '.join([*verb, name])}'"
        cmd, verb = cmd.commands[name], [*verb, name]
    if hasattr(cmd, "commands"):
        return None if docstring else f"'ftspl {' '.join(verb)}' is a group; name a command"
    options = _options(cmd)
    positionals, i = 0, 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("-") and tok not in ("-", "..."):
            name = tok.split("=", 1)[0]
            if name not in options:
                return f"'ftspl {' '.join(verb)}' has no option {name}"
            param = options[name]
            if not param.is_flag and "=" not in tok:
                i += 1  # the option's value
        else:
            positionals += 1
        i += 1
    if not docstring:
        required = sum(1 for p in cmd.params if p.param_type_name == "argument" and p.required)
        if positionals < required:
            missing = [p.name.upper() for p in cmd.params if p.param_type_name == "argument" and p.required]
            return f"'ftspl {' '.join(verb)}' needs {' '.join(missing)}"
    return None


@pytest.fixture(scope="module")
def root():
    from ftspl.cli.main import cli

    return cli()


HINTS = source_hints() + readme_hints()


def test_hints_are_found() -> None:
    """The extraction works: the known hints are among those found (a test that cannot pass vacuously)."""
    hints = {h for _, h, _ in HINTS}
    assert "index add FOLDER --rebuild" in hints  # schema.REBUILD_HINT
    assert "export --pretrained" in hints  # home.py
    assert "export X" in hints  # train's f-string: 'export it with: ftspl export {run}'
    assert len(HINTS) > 20


@pytest.mark.parametrize(("where", "hint", "doc"), HINTS, ids=[f"{w}:{h}" for w, h, _ in HINTS])
def test_hint_is_a_valid_command(root, where: str, hint: str, doc: bool) -> None:
    assert check_hint(root, hint, doc) is None, f"{where}: `ftspl {hint}`: {check_hint(root, hint, doc)}"


def test_checker_catches_bad_hints(root) -> None:
    assert check_hint(root, "index add --rebuild", False) == "'ftspl index add' needs ROOT"
    assert check_hint(root, "index add DIR --ef 512", False) == "'ftspl index add' has no option --ef"
    assert check_hint(root, "eval Q --max-pixels 5", False) == "'ftspl eval' has no option --max-pixels"
    assert check_hint(root, "indx add DIR", False) == "no command 'ftspl indx'"
    assert check_hint(root, "index add DIR --hnsw-ef 512 -v --label-from top", False) is None
    assert check_hint(root, "query P --max-pixels 9 --max-file-bytes 9 --hnsw-ef 64 --json -v", False) is None


def test_messages_name_only_flags_that_exist(root) -> None:
    """A bare ``--flag`` in a message (``raise --max-faces``) must be an option of some command.

    Flags inside a quoted command of another program (``'ray start --head'``) are not ours.
    """
    assert OTHER_PROGRAM.sub("", "start one with 'ray start --head', then --json") == "start one with , then --json"
    every = {o for c in _commands(root) for p in c.params for o in (*p.opts, *p.secondary_opts)}
    bad = []
    for path in sorted((ROOT / "ftspl").rglob("*.py")):
        for text, doc in _strings(path):
            if doc:
                continue
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", OTHER_PROGRAM.sub("", text)):
                if flag not in every:
                    bad.append(f"{path.relative_to(ROOT)}: {flag} in {text[:80]!r}")
    assert not bad, "\n".join(bad)


def _commands(cmd) -> list:
    if hasattr(cmd, "commands"):
        return [cmd] + [c for sub in cmd.commands.values() for c in _commands(sub)]
    return [cmd]


def _options(cmd) -> dict:
    return {o: p for p in cmd.params if p.param_type_name == "option" for o in (*p.opts, *p.secondary_opts)}


def test_verbose_and_json_on_every_command() -> None:
    """Every leaf command of the real app takes -v/--verbose, as the root does, and every one that reports takes --json."""
    from ftspl.cli.main import cli

    def leaves(cmd, path=()):
        if hasattr(cmd, "commands"):
            return [leaf for name, sub in cmd.commands.items() for leaf in leaves(sub, (*path, name))]
        return [(path, cmd)]

    found = leaves(cli())
    assert len(found) >= 10
    for path, cmd in found:
        opts = {o for p in cmd.params for o in p.opts}
        assert {"-v", "--verbose"} <= opts, " ".join(path)
        if path != ("serve",):  # the one verb that reports nothing: it serves until stopped
            assert "--json" in opts, f"ftspl {' '.join(path)} reports but has no --json"


def test_train_defaults_come_from_train_config() -> None:
    """``ftspl train``'s option defaults are TrainConfig's (one source of truth), and it takes --up."""
    from dataclasses import fields

    from ftspl.cli.main import cli
    from ftspl.train.config import TrainConfig

    train = cli().commands["train"]
    defaults = {p.name: p.default for p in train.params}
    cfg = {f.name: f.default for f in fields(TrainConfig)}
    for name in ("rounds", "epochs", "warmup_epochs", "lr", "lam", "batch_size", "augment_copies", "seed",
                 "mode", "backbone", "device", "preset"):
        assert defaults[name] == cfg[name], name
    assert str(defaults["out"]) == cfg["out"]
    up = next(p for p in train.params if p.name == "up")
    add_up = next(p for p in cli().commands["index"].commands["add"].params if p.name == "up")
    assert up.opts == add_up.opts == ["--up"] and up.help == add_up.help and up.default is None
