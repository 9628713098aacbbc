"""Hostile recipes: alias bombs, cycles, key floods, deep nesting, huge values, random mutations.

Whatever the text, validation (schema and :func:`~locopack.recipe.checks.preflight`) ends in
bounded time with a :class:`RecipeError` whose every problem line names the file and the line.
"""

from __future__ import annotations

import re
import signal
import time
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from locopack.errors import RecipeError
from locopack.recipe import load_recipe, parse_recipe
from locopack.recipe.checks import preflight
from locopack.recipe.errors import show
from locopack.recipe.yaml_limits import MAX_DEPTH, MAX_KEYS, MAX_NODES, MAX_SCALAR
from tests.recipe_fuzz_cases import (
    BOMB,
    DETECTORS,
    FAILING_IMPORTS,
    HOSTILE_FILES,
    HOSTILE_MODELS,
    mutated,
    syntactic,
)
from tests.recipe_fuzz_oracle import fuzz, oracle_patches, report_line, run_case

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


@st.composite
def hostile_recipes(draw) -> str:
    """The full recipe with random text mutations (:func:`tests.recipe_fuzz_cases.syntactic`)."""
    return syntactic(FULL, draw(st.randoms(use_true_random=False)))[0]


@FUZZ
@given(hostile_recipes())
def test_hostile_recipes_end_in_located_errors(text):
    validate(text)


# --- semantic fuzzing: validate and build agree (tests/recipe_fuzz_oracle.py) -----------------


@pytest.fixture(scope="module")
def playground(tmp_path_factory):
    """The recipes' folder beside the toy model, with FIFOs, sockets and links out."""
    from tests.recipe_fuzz_cases import make_playground

    return make_playground(tmp_path_factory.mktemp("fuzz"))


def refused_at(case, playground, field: str) -> str:
    """Validate refuses ``case`` at ``field`` with a located line (build is never reached)."""
    with oracle_patches(playground.parent / "plugins"):
        outcome = run_case(case, playground, limit=30)
    assert outcome.kind == "rejected", report_line(case, outcome)
    assert re.search(rf"fuzz\.yaml:\d+: {re.escape(field)}", outcome.message), outcome.message
    return outcome.message


@pytest.mark.parametrize("source", HOSTILE_FILES)
@pytest.mark.parametrize("field", ["neighbours", "sample_unrelated"])
def test_a_hostile_prompt_file_is_refused_by_validate(playground, source, field):
    """FIFOs, sockets, devices, /etc and /proc, links out, binary, huge and empty files."""
    section = "edit" if field == "neighbours" else "evidence"
    case = mutated((section, field), {"count": 3, "source": source})
    refused_at(case, playground, f"{section}.{field}.")


@pytest.mark.parametrize("model", HOSTILE_MODELS)
def test_a_hostile_base_model_is_refused_by_validate(playground, model):
    """FIFOs, devices, files, /etc, folders without (readable) configs, URLs."""
    refused_at(mutated(("base", "model"), model), playground, "base.model")


@pytest.mark.parametrize("name", [d for d in DETECTORS if isinstance(d, str) and ":" in d])
def test_a_detector_naming_code_is_refused_by_validate(playground, name):
    """Without --allow-code, every module:callable is refused, located."""
    refused_at(mutated(("evidence", "detectors"), [name]), playground, "evidence.detectors[0]")


@pytest.mark.parametrize("name", [d for d in DETECTORS if isinstance(d, str) and ":" in d])
def test_a_detector_naming_code_is_refused_or_built_with_allow_code(playground, name):
    """With --allow-code, what validate accepts, build loads (os:system, builtins:eval, a
    callable bound again are refused as not detectors); a module that fails as it is imported
    is refused by build, in one line (validate never imports code)."""
    case = mutated(("evidence", "detectors"), [name], allow_code=True)
    with oracle_patches(playground.parent / "plugins"):
        outcome = run_case(case, playground, limit=30)
    if name in FAILING_IMPORTS:
        assert outcome.kind == "build_rejected", report_line(case, outcome)
        assert outcome.message.startswith(f"error: evidence.detectors: {name}: ")
        return
    assert outcome.kind in ("rejected", "reached_sweep"), report_line(case, outcome)
    if outcome.kind == "rejected":
        assert re.search(r"fuzz\.yaml:\d+: evidence\.detectors\[0\]", outcome.message)


@pytest.mark.parametrize("length", [1, 77, 512])
def test_a_t5_length_on_a_model_without_t5_is_refused_by_validate(playground, length):
    """Build refused it when setting the family up; validate accepted it."""
    message = refused_at(mutated(("base", "max_sequence_length"), length), playground, "")
    assert f"base.max_sequence_length: expected a T5 length this model takes, found {length}" in (
        message
    )


@pytest.mark.parametrize("variant", ["fp16", "", "../x", "f"])
def test_a_variant_the_model_lacks_is_refused_by_validate(playground, variant):
    """Build refused it when diffusers found no such weights; validate accepted it."""
    message = refused_at(mutated(("base", "variant"), variant), playground, "base.variant")
    assert "expected a variant whose weights" in message


def test_a_variant_the_model_holds_is_accepted_and_built(playground):
    folder = playground / "with-fp16"
    folder.mkdir(exist_ok=True)
    for part in (playground / "toy-world").iterdir():
        if not (folder / part.name).exists():
            (folder / part.name).symlink_to(part)
    (folder / "unet").unlink()
    (folder / "unet").mkdir()
    for item in (playground / "toy-world" / "unet").iterdir():
        (folder / "unet" / item.name.replace(".safetensors", ".fp16.safetensors")).symlink_to(item)
    case = mutated(("base", "model"), "./with-fp16")
    case.text = case.text.replace("model: ./with-fp16", "model: ./with-fp16\n  variant: fp16")
    with oracle_patches(playground.parent / "plugins", share_loads=False):
        outcome = run_case(case, playground, limit=120)
    assert outcome.kind == "reached_sweep", report_line(case, outcome)


def test_fuzzed_recipes_validate_and_build_agree(tmp_path):
    """A few hundred semantic (and some syntactic) mutations of the toy recipe: no hang, no
    traceback, nothing validate accepts that build refuses before the sweep (those another
    change deals with aside); ``scripts/fuzz_recipes.py --count 2000`` runs more."""
    found = fuzz(200, seed=7, root=tmp_path, echo=lambda _: None, limit=60)
    counts = found["counts"]
    assert counts["generated"] == 200 and counts["reached_sweep"] > 10, counts
    assert not found["failures"], "\n".join(report_line(c, o) for c, o in found["failures"])
