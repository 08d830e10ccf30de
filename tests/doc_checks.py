"""Checks of the documentation against the code (``tests/test_docs.py``): each function takes the text of a
Markdown file (or the files) and returns its problems as ``'<file>:<line>: <what>'`` lines.

- commands: every ``nnUNetv2_*`` command named in a fenced shell block (``bash``, ``sh``, ``shell``,
  ``console``) or at the start of an inline code span is a console script of the installed packages, and
  every option it is given is one of its ``argparse`` parser's option strings (exact, no prefix matching; a
  value of an option with ``choices`` is one of them); ``make <target>`` names a target of the Makefile, and
  ``make demo DEMO_ARGS="..."`` gives the command behind the variable options it has;
  ``python benchmarks/<script>.py`` names a script whose parser takes the options;
- trainer names ``nnUNetTrainer*``: nnU-Net's, the plugin's, or a class of a ``python`` block of the docs;
- ``nnUNet_sss_*`` variables named in the docs;
- relative links and images (with their ``#anchor``);
- absolute paths of a machine in files under ``docs/``.

The parser of a command is captured without running the command: its entry point is called with a stub
``sys.argv`` while ``ArgumentParser.parse_*args`` raise an exception that carries the parser.
"""
from __future__ import annotations

import argparse
import functools
import os
import re
import runpy
import shlex
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^(\s*)(```|~~~)\s*([\w+-]*)")
COMMAND = re.compile(r"^nnUNetv2_\w+$")
COMMAND_MENTION = re.compile(r"\bnnUNetv2_\w+")
TRAINER = re.compile(r"\bnnUNetTrainer\w*(?![\w.]*\.(?:log|json|csv|png|pth|pt)\b)")  # not a file name
VARIABLE = re.compile(r"\bnnUNet_sss_\w+")
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
MACHINE_PATH = re.compile(r"(?:^|[\s\"'`(=\[])(/(?:tmp|root|home|work|Users|scratch)/)")
PLACEHOLDER_VALUE = re.compile(r"^[A-Z0-9_]+$|\.\.\.|[$<>{}]")
PREFIX_WORDS = {"do", "then", "else", "time", "nohup", "exec", "!", "{"}
SHELL_OPERATORS = {";", "&&", "||", "&", "|"}


@dataclass
class Block:
    language: str
    line: int           # line number of the block's first content line (1-based)
    lines: List[str]


def _lines(text: str) -> Iterator[Tuple[int, str, str, Optional[re.Match]]]:
    """``(line number, line, role, opening fence)``; role: ``prose``, ``open``, ``code`` or ``close``."""
    opening = None
    for number, line in enumerate(text.split("\n"), 1):
        if opening is None:
            opening = FENCE.match(line)
            yield number, line, "prose" if opening is None else "open", opening
        elif line.strip() in ("```", "~~~"):
            yield number, line, "close", opening
            opening = None
        else:
            yield number, line, "code", opening


def fenced_blocks(text: str) -> List[Block]:
    """Fenced code blocks, with their language and first line; indented fences (in lists) included."""
    blocks: List[Block] = []
    for number, line, role, fence in _lines(text):
        if role == "open":
            blocks.append(Block(fence.group(3).lower(), number + 1, []))
        elif role == "code":
            indent = len(fence.group(1))
            blocks[-1].lines.append(line[indent:] if line[:indent].strip() == "" else line)
    return blocks


def prose_lines(text: str) -> Iterator[Tuple[int, str]]:
    """``(line number, line)`` outside fenced blocks."""
    return ((number, line) for number, line, role, _ in _lines(text) if role == "prose")


# ---- shell lines -> commands ------------------------------------------------------------------------------
def logical_lines(block: Block) -> Iterator[Tuple[int, str]]:
    """Lines of a shell block with ``\\`` continuations joined (``console``: the ``$ `` lines only)."""
    pending, start = "", None
    for offset, line in enumerate(block.lines):
        if block.language == "console" and start is None:
            if not line.lstrip().startswith("$ "):
                continue
            line = line.lstrip()[2:]
        start = block.line + offset if start is None else start
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending, start = "", None
    if start is not None:
        yield start, pending


def substitutions(line: str) -> Tuple[str, List[str]]:
    """``line`` with every ``$(...)`` replaced by a word, and the inner command lines."""
    inner, out, i = [], [], 0
    while i < len(line):
        if line.startswith("$(", i):
            depth, j = 1, i + 2
            while j < len(line) and depth:
                depth += {"(": 1, ")": -1}.get(line[j], 0)
                j += 1
            inner.append(line[i + 2:j - 1])
            out.append("SUBSTITUTION")
            i = j
        else:
            out.append(line[i])
            i += 1
    return "".join(out), inner


def words_of(line: str) -> List[str]:
    """Shell words and operators of one line: comments dropped; ``[``, ``]``, ``(``, ``)`` of placeholders
    dropped; ``a|b`` (alternatives) kept as one word, a ``|`` between spaces an operator."""
    line = re.sub(r"(?<=\S)\|(?=\S)", "\x00", line)
    line = re.sub(r"[\[\]()]", " ", line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    return [word.replace("\x00", "|") for word in lexer]


def commands_of(line: str) -> Iterator[List[str]]:
    """Every simple command of a shell line (those in ``$(...)`` too), as words: environment assignments and
    words such as ``do`` or ``time`` in front removed; a ``|`` followed by an option is an alternative
    (``--a X | --b Y``), else a pipe."""
    line, inner = substitutions(line)
    for command in inner:
        yield from commands_of(command)
    words, current = words_of(line), []
    for index, word in enumerate(words):
        following = words[index + 1] if index + 1 < len(words) else ""
        if word in SHELL_OPERATORS and not (word == "|" and following.startswith("-")):
            yield from _command(current)
            current = []
        elif word != "|":
            current.append(word)
    yield from _command(current)


def _command(words: List[str]) -> Iterator[List[str]]:
    while words and (re.match(r"^\w+=", words[0]) or words[0] in PREFIX_WORDS):
        words = words[1:]
    if words:
        yield words


def options_of(words: Sequence[str]) -> List[Tuple[str, Optional[str]]]:
    """``(option, the word after it)`` of a command's words (``--opt=value``: the value)."""
    found = []
    for index, word in enumerate(words[1:], 1):
        if word.startswith("-") and len(word) > 1 and word != "--" and not re.match(r"^-\d", word):
            option, _, value = word.partition("=")
            following = words[index + 1] if index + 1 < len(words) else None
            found.append((option, value or following))
    return found


# ---- what the installed packages have ---------------------------------------------------------------------
class _Parser(BaseException):
    """Raised by ``parse_*args`` while a command's parser is captured; carries the parser."""

    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__()
        self.parser = parser


def _raise_parser(self, *args, **kwargs):
    raise _Parser(self)


def _capture(run, argv0: str) -> Optional[argparse.ArgumentParser]:
    patches = [mock.patch.object(argparse.ArgumentParser, name, _raise_parser)
               for name in ("parse_args", "parse_known_args", "parse_intermixed_args",
                            "parse_known_intermixed_args")]
    with mock.patch.object(sys, "argv", [argv0]), mock.patch.dict(os.environ), \
            mock.patch.object(sys, "path", list(sys.path)):
        for patch in patches:
            patch.start()
        try:
            run()
        except _Parser as captured:
            return captured.parser
        finally:
            for patch in patches:
                patch.stop()
    return None


@functools.lru_cache(maxsize=None)
def console_scripts() -> Dict[str, object]:
    return {entry.name: entry for entry in entry_points(group="console_scripts")}


@functools.lru_cache(maxsize=None)
def command_parser(name: str) -> Optional[argparse.ArgumentParser]:
    """The ``argparse`` parser of console script ``name`` (``None``: it parses no arguments with argparse)."""
    return _capture(console_scripts()[name].load(), name)


@functools.lru_cache(maxsize=None)
def script_parser(path: Path) -> Optional[argparse.ArgumentParser]:
    """The parser of a script run as ``python <path>`` (module code runs; the environment is restored)."""
    return _capture(lambda: runpy.run_path(str(path), run_name="__main__"), str(path))


@functools.lru_cache(maxsize=None)
def make_targets() -> Set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([\w.-]+)\s*:(?!=)", text, flags=re.M))


@functools.lru_cache(maxsize=None)
def make_variable_commands() -> Dict[str, str]:
    """Makefile variables handed on as a command's arguments (``DEMO_ARGS`` -> ``nnUNetv2_sss_demo``)."""
    text = (ROOT / "Makefile").read_text()
    return {variable: command for command, variable in
            re.findall(r"(nnUNetv2_\w+)[^\n]*\$\((\w+)\)\s*$", text, flags=re.M)}


def _option_problems(where: str, program: str, parser: argparse.ArgumentParser,
                     words: Sequence[str]) -> List[str]:
    problems = []
    for option, value in options_of(words):
        action = parser._option_string_actions.get(option)
        if action is None:
            problems.append(f"{where}: {program} has no option {option}")
        elif action.choices and value and not value.startswith("-") and not PLACEHOLDER_VALUE.search(value):
            allowed = {str(choice) for choice in action.choices}
            problems += [f"{where}: {program} {option} {choice}: not one of {sorted(allowed)}"
                         for choice in value.split("|") if choice not in allowed]
    return problems


def command_problems(where: str, words: List[str]) -> List[str]:
    """What is wrong with one command (``words[0]`` the program), for the commands this module knows."""
    program = words[0]
    if COMMAND.match(program):
        if program not in console_scripts():
            return [f"{where}: {program} is not a command of the installed packages"]
        parser = command_parser(program)
        if parser is None:
            has_options = bool(options_of(words))
            return [f"{where}: {program} parses no options, but is given some"] if has_options else []
        return _option_problems(where, program, parser, words)
    if program == "make":
        problems = [f"{where}: make {target}: no such target in the Makefile"
                    for target in words[1:] if not target.startswith("-") and "=" not in target
                    and target not in make_targets()]
        for variable, _, value in (word.partition("=") for word in words[1:] if "=" in word):
            if variable in make_variable_commands():
                problems += command_problems(where, [make_variable_commands()[variable], *words_of(value)])
        return problems
    if re.match(r"^(\S*/)?python3?$", program) and len(words) > 1 and words[1].startswith("benchmarks/"):
        script = ROOT / words[1]
        if not script.is_file():
            return [f"{where}: {words[1]}: no such script"]
        parser = script_parser(script)
        return [] if parser is None else _option_problems(where, words[1], parser, words[1:])
    return []


def inline_commands(text: str) -> Iterator[Tuple[int, List[str]]]:
    """Inline code spans (outside fenced blocks) that start with an ``nnUNetv2_*`` command and give it words."""
    for number, line in prose_lines(text):
        for match in INLINE_CODE.finditer(line):
            span = match.group(2).strip().replace("\\|", "|")
            if COMMAND.match(span.split(" ")[0]) and " " in span:
                for words in commands_of(span):
                    yield number, words


def check_commands(text: str, name: str) -> List[str]:
    """Every command of the shell blocks and inline spans of ``text``, and every ``nnUNetv2_*`` name in it."""
    problems = []
    for block in fenced_blocks(text):
        if block.language in SHELL_LANGUAGES:
            for number, line in logical_lines(block):
                try:
                    commands = list(commands_of(line))
                except ValueError as error:
                    problems.append(f"{name}:{number}: cannot read the shell line ({error})")
                    continue
                for words in commands:
                    problems += command_problems(f"{name}:{number}", words)
    for number, words in inline_commands(text):
        problems += command_problems(f"{name}:{number}", words)
    for number, line in enumerate(text.split("\n"), 1):
        for mention in COMMAND_MENTION.findall(line):
            if not mention.endswith("_") and mention not in console_scripts():
                problems.append(f"{name}:{number}: {mention} is not a command of the installed packages")
    return sorted(set(problems), key=problems.index)


# ---- trainers, variables, links, paths ---------------------------------------------------------------------
def _classes_in(folder: Path) -> Set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        names.update(re.findall(r"^class\s+(nnUNetTrainer\w*)", path.read_text(errors="replace"), flags=re.M))
    return names


@functools.lru_cache(maxsize=None)
def known_trainers() -> Set[str]:
    """Trainer classes of nnU-Net's package and the plugin's."""
    import nnunetv2
    import nnunetv2_sss
    return _classes_in(Path(nnunetv2.__file__).parent) | _classes_in(Path(nnunetv2_sss.__file__).parent)


def documented_classes(texts: Sequence[str]) -> Set[str]:
    """Classes defined in the ``python`` blocks of the docs (examples of trainers of one's own)."""
    return {name for text in texts for block in fenced_blocks(text) if block.language == "python"
            for name in re.findall(r"^\s*class\s+(\w+)", "\n".join(block.lines), flags=re.M)}


def check_trainers(text: str, name: str, examples: Set[str]) -> List[str]:
    known = known_trainers() | examples
    return [f"{name}:{number}: trainer {trainer} is neither nnU-Net's nor the plugin's nor an example of the docs"
            for number, line in enumerate(text.split("\n"), 1) for trainer in TRAINER.findall(line)
            if trainer not in known]


def variables_in(text: str) -> Set[str]:
    """``nnUNet_sss_*`` names (a prefix such as ``nnUNet_sss_sam2_*`` is none)."""
    return {name for name in VARIABLE.findall(text) if not name.endswith("_")}


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors_of(text: str) -> Set[str]:
    anchors, seen = set(), {}
    for _, line in prose_lines(text):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            anchor = github_anchor(heading.group(1))
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            anchors.add(anchor if count == 0 else f"{anchor}-{count}")
    return anchors


def check_links(text: str, path: Path) -> List[str]:
    """Relative links and images of the Markdown file ``path`` (text ``text``) resolve, anchors included."""
    problems, name = [], path.relative_to(ROOT).as_posix()
    for number, line in prose_lines(text):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # http:, https:, mailto:
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file).resolve() if file else path
            if not resolved.exists():
                problems.append(f"{name}:{number}: link {target}: {file} does not exist")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors_of(resolved.read_text()):
                problems.append(f"{name}:{number}: link {target}: no heading #{anchor} in {file or name}")
    return problems


def check_machine_paths(text: str, name: str) -> List[str]:
    return [f"{name}:{number}: absolute path of a machine ({match})"
            for number, line in enumerate(text.split("\n"), 1) for match in MACHINE_PATH.findall(line)]
