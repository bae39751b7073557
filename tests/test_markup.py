"""Issue 25, markup injection: names the user chose (files, runs, splits, classes) are printed as they are.

Rich would read '[x]' in a name as a style tag (a run in 'runs/unet[final]' announced as 'runs/unet', a file
'[/x].png' a MarkupError), ':cat:' as an emoji, a terminal would obey an escape sequence in a file name, and
matplotlib reads '$...$' as mathtext. pixelwise prints through consoles with markup and emoji off and control
characters made visible (``pixelwise.progress``) and draws text with mathtext off; the scan below fails when
source code would turn any of it back on, and the end-to-end test runs such names through the commands.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import tiny_overrides, write_pair
from PIL import Image

SRC = Path(__file__).resolve().parents[1] / "src" / "pixelwise"
# Style tags as rich markup writes them: a string holding one was written for a console that parses markup,
# and would now print the tag itself.
MARKUP_TAG = re.compile(r"\[/?(?:bold|dim|italic|underline|strike|reverse|blink|red|green|yellow|blue|magenta|cyan|"
                        r"white|black|bright_\w+|link|on \w+|#[0-9a-fA-F]{6})(?:[ =][^\]]*)?\]|\[/\]")
PARSES_MARKUP = {"_Console": ("markup", "emoji"), "TextColumn": ("markup",), "TaskProgressColumn": ("markup",)}


def _is_false(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def markup_offenders(source: str, name: str) -> list[str]:
    """Places in ``source`` where a string could reach rich markup (or an emoji code) unparsed-as-text."""
    out = []
    for node in ast.walk(ast.parse(source)):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            keywords = {k.arg: k.value for k in node.keywords}
            if called == "Console":
                out.append(f"{where}: a rich Console; print through pixelwise.progress's consoles (markup off, "
                           "control characters made visible)")
            for flag in PARSES_MARKUP.get(called, ()):
                if not _is_false(keywords.get(flag)):
                    out.append(f"{where}: {called}(...) without {flag}=False")
            if "markup" in keywords and not _is_false(keywords["markup"]):
                out.append(f"{where}: markup= that is not False")
            if called in ("from_markup", "render_markup"):
                out.append(f"{where}: {called}() parses markup")
        elif isinstance(node, ast.ImportFrom) and node.module in ("rich", "rich.markup"):
            out.append(f"{where}: from {node.module} import {', '.join(a.name for a in node.names)} "
                       "(rich.print and rich.markup parse markup)")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MARKUP_TAG.search(node.value):
            out.append(f"{where}: markup tag {MARKUP_TAG.search(node.value).group()!r} would print as it is; "
                       "style with pixelwise.progress.styled/notice")
    return out


def test_source_never_lets_a_string_reach_rich_markup():
    offenders = [o for path in sorted(SRC.rglob("*.py")) for o in markup_offenders(path.read_text(), path.name)]
    assert not offenders, "\n".join(offenders)


def test_the_scan_finds_each_way_markup_comes_back():
    bad = {
        "from rich.console import Console\nc = Console(stderr=True)\n": "a rich Console",
        "c = _Console(markup=False)\n": "_Console(...) without emoji=False",
        "TextColumn('[bold]{task.description}', markup=False)\n": "markup tag '[bold]'",
        "TextColumn('{task.description}')\n": "TextColumn(...) without markup=False",
        "console.print(f'{name} done', markup=True)\n": "markup= that is not False",
        "console.print(f'[yellow]note:[/] {note}')\n": "markup tag '[yellow]'",
        "Text.from_markup(name)\n": "from_markup() parses markup",
        "from rich import print\n": "from rich import print",
        "from rich.markup import escape\n": "from rich.markup import escape",
    }
    for source, expected in bad.items():
        found = markup_offenders(source, "snippet.py")
        assert any(expected in o for o in found), (source, found)
    assert not markup_offenders("x = values[1]\nc = _Console(markup=False, emoji=False)\nlabel = '[0, 255]'\n", "ok")


# --- end to end ----------------------------------------------------------------------------------------------

NAMES = ["img[1]", "[bold]b", "[red]c", ":cat:d"]
CLASSES = ["bg [0]", "[/fg]", r"cost $5 to $\frac$"]


def _run(*args, cwd):
    env = {**os.environ, "COLUMNS": "1000"}  # no wrapping: names stay on one line
    return subprocess.run([sys.executable, "-m", "pixelwise", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env=env)


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_bracketed_file_run_split_and_class_names_are_printed_as_they_are(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data [v2]"
    for split, names in (("train [a]", NAMES), ("val", ["v[0]", "v[1]"])):
        for stem in names:
            mask = np.zeros((32, 32), np.uint8)
            mask[:12], mask[20:] = 1, 2
            write_pair(data / split, stem, rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), mask)
    (data / "classes.yaml").write_text(json.dumps({"names": CLASSES}))
    for name in ("[red]bad.png", "clear\x1b[2J.png"):  # the second would clear the terminal if printed raw
        (data / "train [a]" / "images" / name).write_bytes(b"not an image")
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(data / "train [a]" / "masks" / name)

    check = _run("check", data, "--set", "data.train_split=train [a]", cwd=tmp_path)
    assert check.returncode == 1 and "Traceback" not in check.stderr, check.stderr
    text = _flat(check.stdout)
    assert "[red]bad.png: cannot be read as an image" in text
    assert "clear\\x1b[2J.png: cannot be read" in text and "\x1b[2J" not in check.stdout + check.stderr
    assert all(c in text for c in CLASSES) and "train [a]" in text

    for name in ("[red]bad.png", "clear\x1b[2J.png"):
        (data / "train [a]" / "images" / name).unlink()
        (data / "train [a]" / "masks" / name).unlink()
    run = tmp_path / "runs" / "unet[final]"
    sets = [a for s in [*tiny_overrides(data), "data.train_split=train [a]", "name=unet [final]"] for a in ("--set", s)]
    train = _run("train", *sets, "--max-steps", "2", "--out", run, cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    assert f"-> {run}" in _flat(train.stderr)  # was announced as runs/unet
    html = (run / "report.html").read_text()  # the plots drew the '$' name as text
    assert "cost $5 to $\\frac$" in html

    evaluated = _run("eval", run, "--no-report", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert all(c in _flat(evaluated.stdout) for c in CLASSES)  # the table's rows
    assert f"metrics written to {run / 'eval_val.json'}" in _flat(evaluated.stdout + evaluated.stderr)
    predicted = _run("predict", run, data / "train [a]" / "images", "--out", tmp_path / "preds [1]", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    assert f"wrote 8 files to {tmp_path / 'preds [1]'}" in _flat(predicted.stderr)
    assert (tmp_path / "preds [1]" / ":cat:d.png").is_file()

    missing = _run("eval", tmp_path / "runs" / "[/gone]", cwd=tmp_path)  # an error message naming it
    assert missing.returncode == 1 and "[/gone]: not a run directory" in _flat(missing.stderr), missing.stderr
