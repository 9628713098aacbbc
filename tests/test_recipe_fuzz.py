"""Hostile recipes: alias bombs, cycles, key floods, deep nesting, huge values, random mutations.

Whatever the text, validation (schema and :func:`~locopack.recipe_checks.preflight`) ends in
bounded time with a :class:`RecipeError` whose every problem line names the file and the line.
"""

from __future__ import annotations

import re
import signal
import time
from contextlib import contextmanager

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from locopack.errors import RecipeError
from locopack.recipe import load_recipe, parse_recipe
from locopack.recipe_checks import preflight
from locopack.recipe_errors import show
from locopack.recipe_yaml import MAX_DEPTH, MAX_KEYS, MAX_NODES, MAX_SCALAR

HEAD = """\
version: 1
name: fuzz
base: {model: org/model}
edits:
  - kind: erase
    attribute: style
    concept: Van Gogh
    prompts: ["a painting by {concept}"]
    target: a painting
"""
#: a 1.5 KB alias bomb: 9 levels of 9 aliases each, 9**9 (~387 million) strings once expanded
BOMB = "bomb:\n  l0: &l0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)
)
PROBLEM_LINE = re.compile(r"fuzz\.yaml:\d+: ")


@contextmanager
def time_limit(seconds: int):
    """Fail (instead of hanging) if the block runs longer than ``seconds``."""

    def expire(*_):
        raise TimeoutError(f"validation ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def validate(text: str) -> str | None:
    """Validate ``text`` fully (offline); the error message, or None if it is valid."""
    with time_limit(20):  # guards against hangs only: a case takes milliseconds
        try:
            preflight(parse_recipe(text, "fuzz.yaml"), offline=True)
        except RecipeError as exc:
            message = str(exc)
            assert_located(message)
            return message
    return None


def assert_located(message: str) -> None:
    lines = message.splitlines()
    if re.fullmatch(r"fuzz\.yaml: \d+ problems:", lines[0]):
        lines = [line.strip() for line in lines[1:] if not line.startswith("  ... and ")]
    if not lines[0].startswith("fuzz.yaml: recipe is empty;"):  # an empty document has no line
        assert all(PROBLEM_LINE.match(line) for line in lines), message
    assert len(message) < 5_000, message[:200]


def timed(text: str) -> tuple[str, float]:
    start = time.perf_counter()
    message = validate(text)
    assert message is not None
    return message, time.perf_counter() - start


# --- each limit, with its own message --------------------------------------------------------


def test_an_alias_bomb_is_refused_at_once():
    assert len(BOMB) < 1_600
    for where in ("", "  localize: {seeds: *l8}\n"):
        message, seconds = timed(HEAD + BOMB + where)
        assert re.match(r"fuzz\.yaml:\d+: this value expands to more than [\d,]+ values", message)
        assert seconds < 2


def test_an_alias_bomb_at_a_known_field_is_refused():
    text = BOMB + HEAD.replace('prompts: ["a painting by {concept}"]', "prompts: *l8")
    message, seconds = timed(text)
    assert "expands to more than" in message and seconds < 2


def test_a_merge_key_bomb_is_refused():
    merges = "".join(
        f"  m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: {i}}}\n" for i in range(1, 40)
    )
    message, seconds = timed(HEAD + "bomb:\n  m0: &m0 {a: 1, b: 2}\n" + merges)
    assert "expands to more than" in message and seconds < 2


def test_a_cycle_is_refused_with_its_line():
    message, _ = timed(HEAD + "localize: &loop {seeds: [*loop]}\n")
    assert message.startswith("fuzz.yaml:10: an alias is used inside the value it names")


def test_deep_nesting_is_refused_with_its_line():
    message, seconds = timed(HEAD + "localize: {seeds: " + "[" * 10_000 + "]" * 10_000 + "}\n")
    assert message.startswith("fuzz.yaml:10: localize.seeds")
    assert f"nested deeper than {MAX_DEPTH} levels" in message and seconds < 2


def test_deep_nesting_through_aliases_is_refused():
    chain = "".join(f"  d{i}: &d{i} [[[[*d{i - 1}]]]]\n" for i in range(1, 12))
    message, _ = timed(HEAD + "deep:\n  d0: &d0 [x]\n" + chain)
    assert "nested deeper than" in message and "aliases are expanded" in message


def test_a_key_flood_is_refused_at_once():
    flood = "".join(f"  unknown{i}: {i}\n" for i in range(20_000))
    message, seconds = timed(HEAD + "hub:\n" + flood)
    assert message == f"fuzz.yaml:11: hub: more than {MAX_KEYS:,} keys in one mapping"
    assert seconds < 5


def test_many_unknown_keys_are_placed_in_linear_time():
    """Up to the key limit, every unknown key is placed; 20 mappings of 900 take well under
    the ~minutes that placing them by scanning took."""
    sections = "".join(
        f"  - {{kind: erase, attribute: style, concept: c, prompts: ['{{concept}}'], target: t, "
        f"{', '.join(f'x{i}_{j}: 0' for j in range(900))}}}\n"
        for i in range(20)
    )
    message, seconds = timed(HEAD + sections)
    assert message.startswith("fuzz.yaml: 18000 problems:\n  fuzz.yaml:10: edits[1].x0_0: unknown")
    assert seconds < 30


def test_a_huge_value_is_refused():
    message, _ = timed(HEAD.replace("a painting\n", "'" + "a" * (MAX_SCALAR + 1) + "'\n"))
    assert message.startswith("fuzz.yaml:9: edits[0].target: a value of 65,537 characters")


def test_a_huge_file_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(HEAD + "# " + "x" * 5_000_000 + "\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"big\.yaml:1: larger than 4,000,000 bytes"):
        load_recipe(path)


def test_a_bomb_within_the_node_limit_validates_in_bounded_time():
    text = HEAD + "preserve: &p [a, b, c, d, e, f, g, h]\ncard: {description: x}\n"
    preserve = "".join(f"  p{i}: &p{i} [*p{i - 1}, *p{i - 1}]\n" for i in range(1, 12))
    message, seconds = timed(text + "x:\n  p0: &p0 [q]\n" + preserve)
    assert "unknown field" in message and seconds < 5
    assert 2**11 < MAX_NODES


def test_show_never_writes_a_whole_value():
    value: list = ["x" * 1_000_000]
    for _ in range(60):
        value = [value, value]  # 2**60 leaves, shared
    start = time.perf_counter()
    assert len(show(value)) == 60 and time.perf_counter() - start < 0.1


# --- fuzzing: random mutations of a valid recipe, with bombs and floods mixed in --------------

FIELDS = ["version", "name", "base", "model", "edits", "kind", "concept", "prompts", "target",
          "targets", "localize", "window", "seeds", "layers", "scorer", "edit", "tokens", "lambda",
          "export", "hub", "repo", "<<", "*a", "&a x", "!!python/object", "{", "[", "'", '"',
          "\t", "\x00", ": ", "- ", "#", "\n"]  # fmt: skip
FULL = f"""{HEAD}\
    preserve: [a painting by Monet]
    held_out: ["sunflowers by {{concept}}"]
localize:
  window: 2
  seeds: [0, 1]
  scorer: ./scorers/clip
edit:
  lambda: 0.5
  tokens: concept
hub:
  repo: someone/fuzz
"""
FUZZ = settings(
    max_examples=300,
    deadline=None,  # the per-case time limit above guards against hangs instead
    suppress_health_check=[HealthCheck.too_slow],
)


def _insert(text: str, at: int, piece: str) -> str:
    return text[:at] + piece + text[at:]


@st.composite
def hostile_recipes(draw) -> str:
    text = FULL
    for _ in range(draw(st.integers(1, 4))):
        lines = text.split("\n")
        row = draw(st.integers(0, len(lines) - 1))
        line = lines[row]
        indent = line[: len(line) - len(line.lstrip())]
        kind = draw(st.sampled_from(["bomb", "flood", "value", "token", "delete", "deep"]))
        if kind == "bomb":  # an anchor bomb before the recipe, used at this line's value
            text = BOMB.replace("bomb:\n", "anchors:\n") + text
            if ":" in line:
                lines[row] = line.split(":")[0] + ": *l" + str(draw(st.integers(0, 8)))
                text = BOMB.replace("bomb:\n", "anchors:\n") + "\n".join(lines)
        elif kind == "flood":
            keys = draw(st.integers(1, MAX_KEYS + 50))
            lines[row] = line + "\n" + "".join(f"{indent}k{i}: {i}\n" for i in range(keys))
            text = "\n".join(lines)
        elif kind == "value" and ":" in line:
            value = yaml.safe_dump(draw(_values), default_flow_style=True).strip()
            lines[row] = line.split(":")[0] + ": " + value.replace("\n", " ")
            text = "\n".join(lines)
        elif kind == "token":
            at = draw(st.integers(0, len(text)))
            text = _insert(text, at, draw(st.sampled_from(FIELDS)))
        elif kind == "delete":
            start = draw(st.integers(0, len(text)))
            text = text[:start] + text[start + draw(st.integers(1, 40)) :]
        elif kind == "deep":
            depth = draw(st.integers(1, 3 * MAX_DEPTH))
            lines[row] = line.split(":")[0] + ": " + "[" * depth + "]" * depth
            text = "\n".join(lines)
    return text


_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


@FUZZ
@given(hostile_recipes())
def test_hostile_recipes_end_in_located_errors(text):
    validate(text)
