"""Reading the YAML and JSON files a user hands over (configs, class tables), with bounds on what is parsed.

YAML's safe loader runs no code, but it will still: keep the last of two equal keys without a word (two
``data:`` sections), build a document whose aliases expand exponentially (a "billion laughs" file of a few
hundred bytes), recurse once per nesting level until Python's stack gives out, and let Python's own errors out
for a scalar it cannot convert (a 5,000-digit number is past Python's int-string limit, ``2020-13-45`` a date
with no such month, ``!!bool maybe``). Every YAML and JSON file pixelwise reads as configuration goes through
here, so each of those is one clear ``ConfigError`` naming the file, before anything large is built.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from pixelwise.errors import ConfigError

MAX_BYTES = 4 * 2**20  # configs and class tables are kilobytes; a file this large is not one
MAX_DEPTH = 64  # nesting levels (the deepest real config is about 5)
MAX_VALUES = 200_000  # values once aliases are expanded (the largest real table: a few thousand)
MAX_DIGITS = 4300  # Python's default limit for an int read from or written as text; no setting needs one that long
_TOO_LARGE = 10**MAX_DIGITS


def read_text(path: Path, what: str) -> str:
    """The text of a small file, or a ConfigError saying why not (missing, too large, not UTF-8)."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ConfigError(f"{path}: {size:,} bytes is too large for a {what} (at most {MAX_BYTES:,})")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the {what} ({e})") from None


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing duplicate keys, deep nesting and alias expansion beyond the bounds above."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        # The composer recurses once per level: stop long before Python's recursion limit does.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.YAMLError(f"nested more than {MAX_DEPTH} levels deep (line "
                                     f"{self.peek_event().start_mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` merges are meant to be overridden by the keys beside them
                key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                if key in seen:
                    raise yaml.YAMLError(f"key '{key}' is given twice (lines {seen[key]} and {line}); YAML would "
                                         "silently keep only the last: merge the two into one")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _count_values(node)
        return self.construct_document(node)


def _scalar(construct: Callable[[SafeConstructor, Node], Any]) -> Callable[[SafeConstructor, Node], Any]:
    """``construct`` for one scalar type, its failures on the scalar's text (int('abc'), a 13th month, !!bool maybe)
    made YAML errors naming the line: they are the file's mistakes, not pixelwise's, and deserve no traceback."""
    def checked(loader: SafeConstructor, node: Node) -> Any:
        try:
            return construct(loader, node)
        except (ValueError, ArithmeticError, LookupError, AttributeError) as e:
            what = node.tag.rsplit(":", 1)[-1]
            why = f" ({e})" if isinstance(e, ValueError) else ""  # "month must be in 1..12"; the others say little
            hint = "; put it in quotes if it is text" if what == "timestamp" else ""
            raise ConstructorError(None, None, f"'{str(node.value)[:40]}' is not a valid {what}{why}{hint}",
                                   node.start_mark) from None
    return checked


def _int(loader: SafeConstructor, node: Node) -> int:
    """An int of at most MAX_DIGITS digits. A longer decimal one Python refuses to read (and with no limit set,
    reads in quadratic time); a longer hex one it reads, but it could not be printed in an error message or
    written into the run's config.yaml later."""
    if isinstance(node, ScalarNode) and len(node.value) > MAX_DIGITS:
        raise ConstructorError(None, None, f"a number of more than {MAX_DIGITS:,} digits", node.start_mark)
    value = SafeConstructor.construct_yaml_int(loader, node)
    if abs(value) >= _TOO_LARGE:
        raise ConstructorError(None, None, f"a number of more than {MAX_DIGITS:,} digits", node.start_mark)
    return value


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _scalar(_int))
for _tag, _construct in (("float", SafeConstructor.construct_yaml_float),
                         ("bool", SafeConstructor.construct_yaml_bool),
                         ("timestamp", SafeConstructor.construct_yaml_timestamp)):
    _BoundedLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _scalar(_construct))


def _count_values(root: Node) -> None:
    """Walk the node graph as construction would see it (an alias counts every time it is used)."""
    stack, count = [root], 0
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise yaml.YAMLError(f"its aliases expand to more than {MAX_VALUES:,} values (an alias bomb?); write "
                                 "the values out instead of nesting aliases")
        if isinstance(node, SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, MappingNode):
            for key, value in node.value:
                stack += [key, value]


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML with the safe loader, bounded; ``source`` names the file (or option) in errors."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML ({e})") from None
    except RecursionError:  # defence in depth: the depth bound should come first
        raise ConfigError(f"{source}: not valid YAML (nested too deeply)") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key '{key}' is given twice; JSON readers keep only the last: merge the two")
        out[key] = value
    return out


def load_json(text: str, source: str) -> Any:
    """Parse JSON refusing duplicate keys; nesting beyond the parser's limit is an error, not a crash."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except ValueError as e:
        raise ConfigError(f"{source}: not valid JSON ({e})") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid JSON (nested too deeply)") from None


def load_file(path: Path, what: str) -> Any:
    """A YAML or JSON (by suffix) configuration file, read and parsed within the bounds."""
    text = read_text(path, what)
    return load_json(text, str(path)) if path.suffix.lower() == ".json" else load_yaml(text, str(path))
