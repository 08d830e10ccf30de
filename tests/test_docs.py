"""The documentation cannot drift from the code: README.md and docs/*.md against the installed commands and
their options, the trainers, the ``nnUNet_sss_*`` variables and the files (``doc_checks.py``; what is
checked: docs/testing.md). No training; a few seconds."""
from __future__ import annotations

import re

import nnunetv2_sss
from doc_checks import (ROOT, check_commands, check_links, check_machine_paths, check_trainers, commands_of,
                        documented_classes, variables_in)
from nnunetv2_sss import settings

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TEXTS = {path: path.read_text() for path in DOCS}
TEXT_SUFFIXES = {".md", ".json", ".csv", ".txt", ".yaml", ".yml"}


def name(path) -> str:
    return path.relative_to(ROOT).as_posix()


def report(problems) -> str:
    return "\n" + "\n".join(problems)


def test_every_command_and_option_of_the_docs_exists():
    problems = [p for path, text in TEXTS.items() for p in check_commands(text, name(path))]
    assert not problems, report(problems)


def test_a_misspelt_option_is_named_with_its_file_and_line():
    text = ("# Example\n\n```bash\nnnUNetv2_sss_make_splits -d 27 \\\n    --num-labelled 3 [--seed S]\n"
            "nnUNetv2_train 27 2d 0 -tr nnUNetTrainerSSS --cc   # resume\n```\n\n"
            "Or inline: `nnUNetv2_sss_make_demo_dataset --task brains`.\n")
    assert check_commands(text, "docs/example.md") == [
        "docs/example.md:4: nnUNetv2_sss_make_splits has no option --num-labelled",
        "docs/example.md:6: nnUNetv2_train has no option --cc",
        "docs/example.md:9: nnUNetv2_sss_make_demo_dataset --task brains: not one of ['brain', 'lesion']",
    ]
    assert check_commands("```sh\nnnUNetv2_sss_tarin -d 1\n```\n", "x.md") == [
        "x.md:2: nnUNetv2_sss_tarin is not a command of the installed packages"]
    assert check_commands('```bash\nmake demos\nmake demo DEMO_ARGS="--tsk lesion"\n```\n', "x.md") == [
        "x.md:2: make demos: no such target in the Makefile", "x.md:3: nnUNetv2_sss_demo has no option --tsk"]


def test_placeholders_alternatives_substitutions_and_pipes_are_read_as_a_shell_would():
    line = ("nnUNet_sss_seed=0 nnUNetv2_sss_make_splits -d 27 (--num-labeled 3 | --labeled-fraction 0.1) "
            "[--seed 12345] && nnUNetv2_train 27 2d 0 -tr T1 T2 ... -device cpu|cuda | tee log  # a comment's")
    assert list(commands_of(line)) == [
        ["nnUNetv2_sss_make_splits", "-d", "27", "--num-labeled", "3", "--labeled-fraction", "0.1", "--seed",
         "12345"],
        ["nnUNetv2_train", "27", "2d", "0", "-tr", "T1", "T2", "...", "-device", "cpu|cuda"],
        ["tee", "log"]]
    assert list(commands_of("export nnUNet_extTrainer=$(nnUNetv2_sss_trainers_path):$PWD/my")) == [
        ["nnUNetv2_sss_trainers_path"], ["export", "nnUNet_extTrainer=SUBSTITUTION:$PWD/my"]]
    text = ("```console\n$ nnUNetv2_sss_pretrain -d 1 -c 2d [--transfer encoder|all] [-device D]\n"
            "nnUNetv2_sss_pretrain --no-such-option (output, not a command)\n```\n")
    assert check_commands(text, "x.md") == []


def test_every_trainer_name_exists():
    examples = documented_classes(list(TEXTS.values()))
    problems = [p for path, text in TEXTS.items() for p in check_trainers(text, name(path), examples)]
    assert not problems, report(problems)
    assert check_trainers("`nnUNetTrainerSSSS`", "x.md", examples) == [
        "x.md:1: trainer nnUNetTrainerSSSS is neither nnU-Net's nor the plugin's nor an example of the docs"]


def test_the_docs_and_the_code_name_the_same_environment_variables():
    read = {value for key, value in vars(settings).items() if key.isupper() and isinstance(value, str)
            and value.startswith("nnUNet_sss_")}
    named_in_code = set().union(*(variables_in(path.read_text()) for path in (ROOT / "nnunetv2_sss").rglob("*.py")))
    assert named_in_code <= read, f"read outside settings.py: {sorted(named_in_code - read)}"
    documented = set().union(*(variables_in(text) for text in TEXTS.values()))
    assert documented <= read, f"documented but read by no code: {sorted(documented - read)}"
    table = TEXTS[ROOT / "docs" / "environment_variables.md"]
    listed = set(re.findall(r"^\| `(nnUNet_sss_\w+)` \|", table, flags=re.M))
    assert listed == read, f"missing in the table: {sorted(read - listed)}; not read: {sorted(listed - read)}"


def test_relative_links_resolve():
    problems = [p for path, text in TEXTS.items() for p in check_links(text, path)]
    assert not problems, report(problems)
    assert check_links("[a](docs/nothing.md) [b](#nowhere) [c](https://example.org/x)", ROOT / "README.md") == [
        "README.md:1: link docs/nothing.md: docs/nothing.md does not exist",
        "README.md:1: link #nowhere: no heading #nowhere in README.md"]


def test_no_file_under_docs_holds_a_path_of_a_machine():
    files = [ROOT / "README.md", *(p for p in (ROOT / "docs").rglob("*") if p.suffix in TEXT_SUFFIXES)]
    problems = [p for path in files for p in check_machine_paths(path.read_text(), name(path))]
    assert not problems, report(problems)
    assert check_machine_paths('{"folder": "/tmp/lesion/x"}\nexport nnUNet_raw=/data/raw', "x.json") == [
        "x.json:1: absolute path of a machine (/tmp/)"]


def test_the_changelog_has_an_entry_for_this_version():
    assert f"\n## {nnunetv2_sss.__version__} (" in TEXTS[ROOT / "docs" / "changelog.md"]
