"""Recipe text on the card and the terminal: literal text, never markup or control sequences.

A release is built from a recipe whose description and prompts carry HTML, Markdown images
and links, bare URLs, table pipes, backticks, a YAML document marker and ANSI escape
sequences; its README.md is rendered with markdown-it (raw HTML allowed, bare URLs linked,
as a permissive renderer would) and must hold no tag, link or image the recipe supplied.
"""

from __future__ import annotations

import importlib.util
import shutil

import pytest
from click.testing import CliRunner
from huggingface_hub import ModelCard
from hypothesis import given, settings
from hypothesis import strategies as st

from locopack.cli import cli
from locopack.control_chars import strip_controls
from locopack.recipe import load_recipe
from locopack.release import markdown_text as md

markdown_it = pytest.importorskip("markdown_it")

HOSTILE_RECIPE = r"""# a recipe whose text tries every way out of the card: ``` and </details>
version: 1
name: hostile.example.com
description: "<script>alert(1)</script> \x1b[31mred\x1b[0m and
  \x1b]8;;https://evil/osc\x07a terminal link\x1b]8;;\x07\r\n![](https://evil/beacon.png)\n
  # not a heading\n    not code\n1. not a list\n[click](javascript:alert(1))
  https://evil/auto-link www.evil.com a@evil.com &lt;b&gt; | a | b |\n|---|---|"
base:
  model: ./twin
edits:
  - kind: erase
    attribute: style
    concept: "van gogh <img src=x onerror=alert(1)>"
    prompts:
      - "a painting in the style of {concept} <iframe src=//evil>"
      - "{concept} ![](https://evil/beacon.png) `tick` ``two``"
      - "a | house\nby {concept}\n---\nlicense: evil\n---"
    target: "[click](javascript:alert(1))"
    preserve: ["https://evil/auto-link", "a photo of a cat | with `ticks` and <b>bold</b>"]
    held_out: ["a cat painted by {concept} <iframe src=//evil>"]
localize:
  window: 2
  prompts_per_edit: 2
  steps: 2
  guidance: 4.0
  seeds: [0]
  scorer: ./scorer
  layers: [0, 1]
evidence:
  ssim_threshold: 1.0
  unrelated: ["[x](https://evil/unrelated)", "<svg onload=alert(1)>"]
"""
TEXTS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<iframe src=//evil>",
    "![](https://evil/beacon.png)",
    "[click](javascript:alert(1))",
    "https://evil/auto-link and www.evil.com, mailto:a@b, evil.com",
    "a | b\nc `d` ``e`` ```f```",
    "# heading\n> quote\n- item\n1. one\n12) twelve\n    indented\n---\n===\n~~~\n***",
    "&lt;script&gt; &#60;b&#62; AT&T \\* escaped",
    "$x$ $$y$$ _under_ *star* ~~strike~~ <https://evil/angle> [ref]: https://evil",
]


def _renderer():
    has_linkify = importlib.util.find_spec("linkify_it") is not None
    return markdown_it.MarkdownIt("gfm-like", {"html": True, "linkify": has_linkify})


def _tokens(text: str) -> list:
    """Every token of ``text``, inline children included."""
    found = []
    for token in _renderer().parse(text):
        found += [token, *(token.children or [])]
    return found


def _markup(tokens: list) -> list[str]:
    """The HTML, links and images among ``tokens``, with their URLs."""
    return [
        f"{t.type} {t.attrs.get('href') or t.attrs.get('src') or t.content}"
        for t in tokens
        if t.type in ("html_block", "html_inline", "link_open", "image")
    ]


def _shown(tokens: list) -> str:
    """The text a reader sees: text and code contents, soft breaks as newlines."""
    parts = {"text": None, "code_inline": None, "softbreak": "\n", "hardbreak": "\n"}
    return "".join(
        t.content if parts[t.type] is None else parts[t.type] for t in tokens if t.type in parts
    )


@pytest.mark.parametrize("text", TEXTS)
def test_recipe_text_renders_as_the_same_literal_text(text):
    lines = "\n".join(line.strip() for line in text.splitlines())
    for rendered, shown in ((md.inline(text), " ".join(text.split())), (md.prose(text), lines)):
        tokens = _tokens(rendered)
        assert _markup(tokens) == [], rendered
        assert {t.type for t in tokens if t.block} == {
            "paragraph_open",
            "inline",
            "paragraph_close",
        }
        assert _shown(tokens) == shown
    codes = [t.content for t in _tokens(md.code(text)) if t.type == "code_inline"]
    assert codes == [" ".join(text.splitlines())]


# pieces of markup, so that the search meets tags, links and tables, not only letters
PIECES = st.sampled_from(
    [
        "<",
        ">",
        "a",
        "b",
        "/",
        "script",
        "](",
        ")",
        "[",
        "!",
        "http",
        "://",
        "www.",
        ".com",
        "@",
        "mailto:",
        "javascript:",
        "`",
        "``",
        "|",
        "\n",
        " ",
        "    ",
        "&",
        "#",
        ";",
        "*",
        "_",
        "~",
        "\\",
        "1.",
        "-",
        "=",
        ">",
        "$",
        "\x1b[31m",
        "\x07",
        "é",
    ]
)
RECIPE_TEXT = st.one_of(
    st.lists(PIECES, max_size=24).map("".join),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40),
)


@settings(max_examples=400, deadline=None)
@given(RECIPE_TEXT)
def test_any_text_in_a_table_cell_stays_one_literal_cell(text):
    row = f"| a | b |\n|---|---|\n| {md.inline(text)} | {md.code('x' + text, cell=True)} |\n"
    tokens = _tokens(row)
    assert _markup(tokens) == []
    cells = [t for t in _renderer().parse(row) if t.type == "inline"][2:]
    assert len(cells) == 2
    visible = " ".join(strip_controls(text).split())
    assert _shown(cells[0].children) == visible
    (code,) = [t.content for t in cells[1].children if t.type == "code_inline"]
    assert code.strip() == " ".join(strip_controls("x" + text).splitlines()).strip()


def test_fenced_blocks_outlast_the_backticks_inside():
    text = "a\n```\n<script>x</script>\n````\nb"
    (fence,) = [t for t in _tokens(md.fenced(text, "yaml")) if t.type == "fence"]
    assert (fence.info, fence.content) == ("yaml", text + "\n")


def test_control_sequences_are_stripped_and_lines_kept():
    text = (
        "a\x1b[31mred\x1b[0m\t\x1b]8;;https://evil\x07link\x1b]8;;\x07\r\n\x9b2Jb\u202eevil\x00\x7f"
    )
    assert strip_controls(text) == "ared\tlink\nbevil"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A release built from :data:`HOSTILE_RECIPE` on the sd1 twin, and the CLI's outputs."""
    root = tmp_path_factory.mktemp("hostile")
    runner = CliRunner()
    result = runner.invoke(cli, ["--threads", "1", "twin", "sd1", str(root / "twin")])
    assert result.exit_code == 0, result.output
    shutil.copytree(root / "twin" / "scorer", root / "scorer")
    (root / "recipe.yaml").write_text(HOSTILE_RECIPE)
    validated = runner.invoke(cli, ["validate", "--offline", str(root / "recipe.yaml")])
    built = runner.invoke(cli, ["build", str(root / "recipe.yaml"), "--out", str(root / "out")])
    assert built.exit_code == 0, built.output
    return root, validated, built


def test_the_card_renders_no_tag_link_or_image_from_the_recipe(hostile):
    root, _, _ = hostile
    card = ModelCard.load(root / "out" / "README.md")
    tokens = _tokens(card.text)
    markup = _markup(tokens)
    assert not [m for m in markup if not m.startswith("image ")], markup
    images = [m.split(" ", 1)[1] for m in markup]
    assert images and all((root / "out" / src).is_file() for src in images), images
    shown = _shown(tokens)
    for text in ("<script>alert(1)</script>", "[click](javascript:alert(1))", "| a | b |"):
        assert text in shown  # the description is shown, as literal text
    assert "\x1b" not in card.content and "\r" not in card.content
    # tables keep their columns, whatever pipes and newlines the prompts hold
    rows = [t for t in _renderer().parse(card.text) if t.type in ("tr_open", "th_open", "td_open")]
    widths = [sum(1 for _ in group) for group in _split_rows(rows)]
    assert widths and len(set(widths)) <= 4 and min(widths) >= 2
    fences = {t.info: t.content for t in tokens if t.type == "fence"}
    assert set(fences) == {"python", "yaml"}
    compile(fences["python"], "usage", "exec")  # the snippet is valid Python
    assert fences["yaml"] == strip_controls(HOSTILE_RECIPE).rstrip() + "\n"


def _split_rows(tokens: list) -> list[list]:
    rows: list[list] = []
    for token in tokens:
        if token.type == "tr_open":
            rows.append([])
        else:
            rows[-1].append(token)
    return rows


def test_the_card_metadata_cannot_be_broken_out_of(hostile):
    root, _, _ = hostile
    data = ModelCard.load(root / "out" / "README.md").data.to_dict()
    prompts = load_recipe(root / "recipe.yaml").edits[0].originals()
    assert "license" not in data
    assert {w["text"] for w in data["widget"]} <= set(prompts)


def test_validate_and_build_print_no_control_sequences(hostile):
    _, validated, built = hostile
    assert validated.exit_code == 0, validated.output
    assert "<script>alert(1)</script> red and a terminal link" in validated.output
    for output in (validated.output, built.output):
        assert not any(c in output for c in "\x1b\x07\r\x9b"), output
