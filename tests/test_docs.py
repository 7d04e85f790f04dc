"""Every command the docs show runs, every docs page is linked from the README, every relative link resolves.

Commands are collected from README.md, docs/*.md and scripts/device/README.md: each line of a
``bash``/``sh``/``console`` code block (``\\`` continuations joined, ``&&`` chains split) and each inline
code span that is an ``lra-`` console script with arguments. Per command:

* ``lra-train ...``: the Hydra config composed from ``conf_dir()`` with the overrides (a ``-m`` sweep
  once per value of each swept key), the command line's ``task.<key>`` put above the trainer preset as
  ``lra-train`` does, and validated as ``lra-train`` validates it before any work;
* ``lra-bench ...``: composed likewise and resolved into the benchmark settings for the CPU;
* ``lra-data ...``: its arguments parsed and its config composed; ``lra-report ...``: its arguments parsed
  and its inputs found;
* ``bash SCRIPT``/``python SCRIPT``: the script exists; ``python -c CODE``: runs; ``pip install .[EXTRA]``:
  the extra exists.

A command that needs what a test cannot have ends in a comment the test reads: ``# needs: data`` or
``# needs: gpu`` (composed, not validated), ``# needs: plugin`` (an attention variant that is not
installed) or the name of a distribution that is not installed here (such as a Hydra launcher plugin):
the command line is parsed, not composed. ``<name>`` stands for a value the reader supplies.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

import lra
from lra.cli import data as cli_data
from lra.report import cli as report_cli
from lra.training.config import explicit_beats_presets, validate
from lra.bench import resolve_settings

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "scripts" / "device" / "README.md"]
SHELL_BLOCKS = {"bash", "sh", "console", "shell"}
CONSOLE_SCRIPTS = ("lra-train", "lra-bench", "lra-data", "lra-report")
NEEDS = re.compile(r"#\s*needs:\s*([\w ,-]+?)\s*$")
PLACEHOLDER = re.compile(r"<([\w-]+)>")
README_MAX_LINES = 150


def _commands(path: Path) -> list[tuple[str, str, set[str]]]:
    """``(where, command, needs)`` for every command of one markdown file."""
    out: list[tuple[str, str, set[str]]] = []
    lang, pending, start = None, "", 0
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = re.match(r"\s*```(\w*)", line)
        if fence:
            lang = None if lang is not None else fence.group(1).lower()
            continue
        if lang is None:
            for span in re.findall(r"`([^`]+)`", line):
                if " " in span and span.split(" ", 1)[0] in CONSOLE_SCRIPTS:  # a command, not a name
                    out.append((f"{path.relative_to(REPO)}:{no}", span, set()))
            continue
        if lang not in SHELL_BLOCKS:
            continue
        if not pending:
            start = no
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text, pending = (pending + line).strip(), ""
        if not text or text.startswith("#"):
            continue
        found = NEEDS.search(text)
        needs = {n.strip() for n in found.group(1).split(",")} if found else set()
        out.append((f"{path.relative_to(REPO)}:{start}", text, needs))
    return out


COMMANDS = [c for page in DOCS for c in _commands(page)]


def _argv(text: str) -> list[list[str]]:
    """The command line as argument lists, one per ``&&``-joined command; placeholders filled in,
    comments and leading ``VAR=value`` settings dropped."""
    words = shlex.split(PLACEHOLDER.sub(r"placeholder-\1", text), comments=True)
    commands, current = [], []
    for w in words + ["&&"]:
        if w == "&&":
            while current and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", current[0]):
                current.pop(0)
            if current:
                commands.append(current)
            current = []
        else:
            current.append(w)
    return commands


def _expand(overrides: list[str]) -> list[list[str]]:
    """A sweep's command line as the single-job command lines that cover every value: the first value of
    every swept key, then each other value of one key at a time."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    base = [list(o.sweep_string_iterator())[0] if o.is_sweep_override() else None for o in parsed]
    first = [f"{o.get_key_element()}={v}" if v is not None else o.input_line for o, v in zip(parsed, base)]
    runs = [first]
    for i, o in enumerate(parsed):
        if o.is_sweep_override():
            for value in list(o.sweep_string_iterator())[1:]:
                runs.append(first[:i] + [f"{o.get_key_element()}={value}"] + first[i + 1:])
    return runs


def _installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def _compose(config: str, overrides: list[str]):
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(lra.conf_dir()), version_base="1.3"):
        return compose(config, overrides=overrides)


def _hydra_app(config: str, args: list[str], needs: set[str]) -> None:
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    for flag in overrides:
        assert not flag.startswith("-"), f"unknown flag {flag!r}"
    jobs = _expand(overrides)  # parsing alone checks the override syntax
    if "plugin" in needs or not all(_installed(n) for n in needs - {"data", "gpu", "plugin"}):
        return
    lra.register_resolvers()
    for job in jobs:
        cfg = _compose(config, job)
        if needs & {"data", "gpu"}:
            continue
        if config == "train":
            validate(explicit_beats_presets(cfg, job))
        else:
            resolve_settings(cfg, torch.device("cpu"))


def _extras() -> set[str]:
    """The optional-dependency groups of pyproject.toml (Python 3.10 has no tomllib)."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+)\s*=", section, flags=re.M))


def _check(argv: list[str], needs: set[str]) -> None:
    prog, args = argv[0], argv[1:]
    if prog == "lra-train":
        _hydra_app("train", args, needs)
    elif prog == "lra-bench":
        _hydra_app("bench", args, needs)
    elif prog == "lra-data":
        command, task, overrides, show = cli_data.parse(args)
        if "plugin" not in needs:
            cli_data.compose(overrides)
    elif prog == "lra-report":
        ns = report_cli.parse_args(args)
        for path in ns.inputs:
            assert (REPO / path).exists() or "data" in needs, f"lra-report input {path} does not exist"
    elif prog == "bash":
        assert (REPO / args[0]).is_file(), f"no script {args[0]}"
    elif prog in ("python", "python3"):
        if args[:2] == ["-m", "pytest"]:
            return
        if args[0] == "-c":
            done = subprocess.run([sys.executable, "-c", args[1]], cwd=REPO, capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, done.stderr[-2000:]
        else:
            assert (REPO / args[0]).is_file(), f"no script {args[0]}"
    elif prog == "pip":
        extras = _extras()
        for arg in args:
            for extra in re.findall(r"\[([\w,-]+)\]", arg) if "lra-bench" in arg or arg.startswith(".") else []:
                assert set(extra.split(",")) <= set(extras), f"{arg}: no such extra; extras: {sorted(extras)}"
    else:
        raise AssertionError(f"the docs test does not know how to check {prog!r}: teach it, or show another command")


def test_commands_were_found():
    progs = {_argv(text)[0][0] for _, text, _ in COMMANDS}
    assert set(CONSOLE_SCRIPTS) <= progs, progs
    assert len(COMMANDS) > 40


@pytest.mark.parametrize("where,text,needs", COMMANDS, ids=[f"{w} {t[:60]}" for w, t, _ in COMMANDS])
def test_command_runs(where, text, needs, capsys):
    for argv in _argv(text):
        try:
            _check(argv, needs)
        except SystemExit as stop:  # argparse / lra-data usage errors
            pytest.fail(f"{where}: `{text}` exits with {stop.code}: {capsys.readouterr().err[-500:]}")


def _links(path: Path) -> list[tuple[str, str]]:
    """``(target, fragment)`` of every relative markdown link of a page (code blocks left out)."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    out = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, fragment = target.partition("#")
        out.append((file, fragment))
    return out


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a page: lowercase, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    heads = re.findall(r"^#+\s+(.+?)\s*$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", DOCS, ids=[str(p.relative_to(REPO)) for p in DOCS])
def test_relative_links_resolve(page):
    for file, fragment in _links(page):
        target = (page.parent / file).resolve() if file else page
        assert target.exists(), f"{page.relative_to(REPO)}: link to {file} does not resolve"
        if fragment and target.suffix == ".md":
            assert fragment in _anchors(target), f"{page.relative_to(REPO)}: no heading #{fragment} in {file}"


def test_readme_links_every_docs_page_and_stays_short():
    readme = REPO / "README.md"
    linked = {(REPO / file).resolve() for file, _ in _links(readme) if file}
    pages = set((REPO / "docs").glob("*.md"))
    assert not pages - linked, f"docs pages the README does not link: {sorted(p.name for p in pages - linked)}"
    lines = len(readme.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; the depth belongs in docs/"


def test_readme_shows_the_ci_commands():
    """.ci/run runs the README's test command verbatim; the first-run command stays as it is too."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert 'pip install -e ".[test]" && python -m pytest -q' in readme
    assert "pip install -e . && lra-train trainer=quick" in readme
    assert 'pip install -e ".[test]" && python -m pytest -q' in (REPO / ".ci" / "run").read_text()
