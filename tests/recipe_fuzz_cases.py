"""Recipe fuzzing, the cases: hostile mutations of the toy recipe, and the files they name.

A case is the toy recipe (``recipes/toy/erase-stripes.yaml``, on the real toy model) with a few
*semantic* mutations, each field set to a plausible-but-hostile value (prompt files that are
FIFOs, sockets, devices, ``/etc`` files or links out of the recipe's folder; model folders that
are files or miss configs; plug-in detectors that name ``os:system``; numbers at and past their
bounds...), and sometimes *syntactic* ones on the text (alias bombs, key floods, deep nesting,
stray tokens, cuts).  :mod:`tests.recipe_fuzz_oracle` runs them.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from locopack.hub_ref import is_hub_id
from locopack.recipe.yaml_limits import MAX_DEPTH, MAX_KEYS

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "recipes" / "toy"
TOY_RECIPE = (TOY / "erase-stripes.yaml").read_text(encoding="utf-8")
#: the credential the fuzz puts in the environment (a recipe or prompt file holding it is refused)
SECRET_ENV, SECRET = "LOCOPACK_FUZZ_TOKEN", "fuzz-secret-7f3a9c2e41b8"
DELETE = object()  # a mutation value: remove the key
SITE = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"

# --- the playground: a recipe folder beside the toy model, with hostile files ------------------


def make_playground(root: Path) -> Path:
    """Fill ``root`` with the files the mutations name; return the recipes' folder."""
    here, outside = root / "recipe", root / "outside"
    for folder in (here / "sub", here / "nocfg", outside):
        folder.mkdir(parents=True, exist_ok=True)
    for name in ("toy-world", "toy-clip"):
        (here / name).symlink_to(TOY / name)
    captions = "".join(f"a {c} {s} on a dots background\n" for c in ("red", "blue") for s in "xyz")
    for path in (here / "prompts.txt", here / "sub" / "prompts.txt", outside / "prompts.txt"):
        path.write_text(captions, encoding="utf-8")
    (here / "empty.txt").write_text("", encoding="utf-8")
    (here / "comments.txt").write_text("# nothing\n\n", encoding="utf-8")
    (here / "secret.txt").write_text(f"a circle {SECRET}\n", encoding="utf-8")
    (here / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (here / "file.txt").write_text("not a model\n", encoding="utf-8")
    with open(here / "huge.txt", "wb") as handle:  # sparse: larger than any file limit
        handle.truncate(5 * 1024 * 1024)
    os.mkfifo(here / "fifo")
    with contextlib.closing(socket.socket(socket.AF_UNIX)) as sock:
        sock.bind(str(here / "socket"))
    links = {"link-out": "/etc/passwd", "link-dir": "/etc", "link-fifo": here / "fifo"}
    links |= {"dangling": here / "nowhere", "link-in": here / "prompts.txt"}
    links |= {"link-model": TOY / "toy-world", "link-outside": outside / "prompts.txt"}
    for name, target in links.items():
        (here / name).symlink_to(target)
    _partial_models(here)
    _plugins(root / "plugins")
    return here


#: plug-in detector modules (the oracle puts their folder on ``sys.path``): name -> source
_DETECT = "\n\ndef detect(images, prompts):\n    return []\n"
PLUGINS = {
    "fuzz_good": "def detect(images, prompts, **options):\n    return [{} for _ in images]\n",
    "fuzz_raises": "raise RuntimeError('broken at import')" + _DETECT,
    "fuzz_exits": "import sys\nsys.exit(3)" + _DETECT,
    "fuzz_missing": "import no_such_dependency_xyz" + _DETECT,
    "fuzz_rebinds": _DETECT + "\ndetect = None\n",
    "fuzz_syntax": "def detect(images, prompts):\n    return [\n",
    "fuzz_one_arg": "def detect(images):\n    return []\n",
}


def _plugins(folder: Path) -> None:
    folder.mkdir()
    for name, source in PLUGINS.items():
        (folder / f"{name}.py").write_text(source, encoding="utf-8")


def _partial_models(here: Path) -> None:
    """Copies of the toy model's layout with one part missing or hostile, and CLIP folders."""
    world = TOY / "toy-world"
    parts = [p.name for p in world.iterdir() if p.is_dir()]
    for missing in (*parts, "model_index.json"):
        folder = here / f"no-{missing.split('.')[0].replace('_', '-')}"
        folder.mkdir()
        for name in [*parts, "model_index.json"]:
            if name != missing:
                (folder / name).symlink_to(world / name)
    (here / "only-index").mkdir()
    (here / "only-index" / "model_index.json").symlink_to(world / "model_index.json")
    for name, index in (("bad-index", "{not json"), ("list-index", "[1, 2]")):
        (here / name).mkdir()
        (here / name / "model_index.json").write_text(index, encoding="utf-8")
    (here / "index-fifo").mkdir()
    os.mkfifo(here / "index-fifo" / "model_index.json")
    unet = here / "unet-fifo"
    (unet / "unet").mkdir(parents=True)
    for name in [*parts, "model_index.json"]:
        if name != "unet":
            (unet / name).symlink_to(world / name)
    os.mkfifo(unet / "unet" / "config.json")
    for weights in (world / "unet").glob("*.safetensors"):
        (unet / "unet" / weights.name).symlink_to(weights)
    clip = TOY / "toy-clip"
    for name, config in (("clip-bert", '{"model_type": "bert"}'), ("clip-noweights", None)):
        (here / name).mkdir()
        text = config or (clip / "config.json").read_text(encoding="utf-8")
        (here / name / "config.json").write_text(text, encoding="utf-8")
    (here / "clip-fifo").mkdir()
    os.mkfifo(here / "clip-fifo" / "config.json")


# --- semantic mutations ----------------------------------------------------------------------

#: prompt files a recipe may read (the last two with --prompt-dir), and the hostile rest
READABLE = ["toy", "toy-deep", "./prompts.txt", "prompts.txt", "./sub/prompts.txt", "./link-in",
            "./link-outside", "../outside/prompts.txt"]  # fmt: skip
HOSTILE_FILES = ["/etc/passwd", "/proc/self/environ", "/dev/zero", "/dev/null", "./fifo",
                 "./socket", "./link-out", "./link-dir", "./link-fifo", "./dangling", "../x",
                 "./huge.txt", "./binary.bin", "./empty.txt", "./comments.txt", "./secret.txt",
                 "./", "./sub", "~/x", "/etc", "/", "./toy-world/model_index.json"]  # fmt: skip
LONG_PATHS = ["./" + "d" * 300, "./" + "d/" * 2100 + "x", "./" + "a" * 300, "/" + "a/" * 2100]
FILES = READABLE + HOSTILE_FILES + LONG_PATHS[:2]
#: base models that load, that validate checks for their form only offline, and hostile ones
GOOD_MODELS = ["./toy-world", "toy-world", "./toy-world/", "./link-model", str(TOY / "toy-world")]
HUB_MODELS = ["org/model", "runwayml/stable-diffusion-v1-5"]
HOSTILE_MODELS = ["./fifo", "./socket", "/dev/null", "/dev/zero", "./file.txt", "./empty.txt",
                  "./nocfg", "./only-index", "./no-unet", "./no-model-index", "./bad-index",
                  "./list-index", "./index-fifo", "./unet-fifo", "./toy-world/unet", "./toy-clip",
                  "/etc", "/etc/passwd", "../x", "./link-out", "./dangling", "~/nowhere",
                  "https://huggingface.co/org/model", "org/../model"]  # fmt: skip
PARTIAL_MODELS = ["./no-tokenizer", "./no-text-encoder", "./no-vae", "./no-scheduler"]
MODELS = GOOD_MODELS + HUB_MODELS + HOSTILE_MODELS + PARTIAL_MODELS + LONG_PATHS[2:]
SCORERS = ["./toy-clip", "./clip-bert", "./clip-noweights", "./clip-fifo", *MODELS]
DETECTORS = ["clip", "toy", "toy-deep", "nudenet", "os:system", "builtins:eval", "json:loads",
             "subprocess:getoutput", "os.path:join", "no.such.module:fn", "nosuchmodule:fn",
             "locopack.evidence.detectors.toy:toy_detector",
             "locopack.evidence.detectors.toy:nothing",
             "locopack.evidence.detectors:rates", "locopack:x", "Toy", "toy:", ":x",
             {"name": "toy", "options": {"bogus": 1}}, {"name": "clip", "options": {"scorer": 1}},
             {"name": "toy", "options": {}}, {"name": "os:system", "options": {"command": "id"}},
             {"name": "toy", "options": [1]}] + [f"{name}:detect" for name in PLUGINS]  # fmt: skip
_BIG = [2**31, 2**63 - 1, 2**63, 2**64, 10**30]
_PROMPTS = ["a red circle on a {concept} background", "a blue square with {concept}"]


def _sample(rng: random.Random) -> Any:
    count = rng.choice([0, 1, 3, 12, 72, 73, 1000, 1001, -1, "3", 2**64])
    sample = {"count": count, "source": rng.choice(FILES), "seed": rng.choice([0, 1, -1, *_BIG])}
    return rng.choice([sample, sample, {"count": 3}, {"source": "toy"}, "toy", None, DELETE])


def _detectors(rng: random.Random) -> Any:
    return (
        rng.sample(DETECTORS, rng.randint(1, 3)) if rng.random() < 0.9 else rng.choice([[], "toy"])
    )


#: field path -> the values a mutation draws from (a callable draws one itself)
VALUES: dict[tuple, Any] = {
    ("name",): ["fuzz", "Fuzz", "", "a" * 65, "x/y", "../x", 1],
    ("version",): [1, 2, 0, "1", True],
    ("description",): [DELETE, f"holds {SECRET}", "\x1b[31mred\x1b[0m", "x" * 70_000],
    ("base", "model"): MODELS,
    ("base", "revision"): [DELETE, None, "main", "v1", "0" * 40, "", "../x"],
    ("base", "dtype"): ["float32", "float16", "bfloat16", "float64", "fp16"],
    ("base", "variant"): [DELETE, None, "fp16", "ema", "", "../x", "bf16"],
    ("base", "max_sequence_length"): [DELETE, None, 0, 1, 77, 256, 512, 513, 2**63],
    ("localize", "window"): [0, 1, 4, 7, 8, 99, -1],
    ("localize", "steps"): [0, 1, 2, 20, 999, 1000, 1001, 10**9],
    ("localize", "seeds"): [[0], 0, 2**63 - 1, 2**63, [2**64], -1, [], [0, 0], list(range(40))],
    ("localize", "resolution"): [DELETE, None, 8, 7, 16, 24, 32, 64, 4096, 2**31, 0],
    ("localize", "guidance"): [0, -1, 1e308, 7.5, "7.5", float("nan"), float("inf")],
    ("localize", "prompts_per_edit"): [0, 1, 4, 10**6],
    ("localize", "mode"): ["fast", "full", "slow"],
    ("localize", "layers"): [
        DELETE,
        [0],
        [0, 0],
        [6],
        [7],
        [-1],
        [10**9],
        [2**64],
        [SITE],
        [SITE, SITE],
        [SITE, 0],
        ["nonexistent"],
        [],
        [True],
        [""],
        [0, "x"],
        [SITE.replace("attn2", "attn1")],
    ],  # fmt: skip
    ("localize", "scorer"): SCORERS,
    ("edit", "lambda"): [1e-300, 5e-324, 1e300, 0, -1, 0.1, 1.7e308, float("inf")],
    ("edit", "tokens"): ["concept", "last", "all", "sequence", "first"],
    ("edit", "matrices"): ["key", "value", "both", "none"],
    ("edit", "preserve_weight"): [0, 1e300, -1],
    ("edit", "neighbours"): _sample,
    ("edit", "seeds"): [[0], [2**64], [], [-1]],
    ("edit", "timesteps"): [[0.0], [1.5], [], [float("nan")]],
    ("evidence", "detectors"): _detectors,
    ("evidence", "sample_unrelated"): _sample,
    ("evidence", "seeds"): [[0], [2**63], [2**64], [], DELETE],
    ("evidence", "unrelated"): [[], ["x"], ["a red circle on a stripes background"], DELETE],
    ("evidence", "ssim_threshold"): [0, 1, 1.5, 0.5],
    ("evidence", "attack"): [
        {"tokens": 17},
        {"steps": 10**9},
        {"seconds": 0},
        {"candidates": 0},
        {"seed": 2**64},
        {"tokens": 16, "steps": 0},
    ],  # fmt: skip
    ("export", "max_rank"): [0, 1, 10**9],
    ("export", "energy"): [0, 1, 1.1, 1e-300],
    ("export", "adapter"): [True, False],
    ("export", "merged"): [True, False, "yes"],
    ("export", "onnx"): [True, False],
    ("hub", "repo"): ["a/b", "a", "../x", "a/b/c", None],
    ("card", "license"): ["mit", "inherit", "", "a b"],
    ("edits", 0, "concept"): ["stripes", "", " ", "Stripes", "dots", "a" * 1000, "{concept}"],
    ("edits", 0, "prompts"): [
        ["{concept}"],
        ["a plain background"],
        ["{other}"],
        [],
        _PROMPTS,
        [_PROMPTS[0], _PROMPTS[0]],
        ["{concept"],
    ],  # fmt: skip
    ("edits", 0, "target"): ["a plain background", "stripes", ["a"], [], "", 1],
    ("edits", 0, "preserve"): [["a red circle on a stripes background"], [], [""], DELETE],
    ("edits", 0, "held_out"): [["{concept}"], [], ["{x}"]],
    ("edits", 0, "kind"): ["update", "erase", "remove"],
    ("edits", 0, "attribute"): ["style", "object", "fact"],
    ("edits",): [[], DELETE, "x"],
    ("preserve",): [["a red circle on a stripes background"], ["x"], [], DELETE],
}
#: mutations another change is dealing with: counted on their own, and reported
KNOWN = (
    "steps above the scheduler's range",
    "a resolution the family cannot take",
    "seeds >= 2**63",
    "unknown detector options",
    "very long paths",
    "missing tokenizer / text_encoder (or other component) config",
    "a Hub id, which validate --offline checks for its form only (by design)",
    "a plug-in whose import fails, which validate never imports (by design)",
)
#: plug-ins whose module fails as it is imported
FAILING_IMPORTS = ("fuzz_raises:detect", "fuzz_exits:detect", "fuzz_missing:detect")


def known_reasons(path: tuple, value: Any) -> list[str]:
    """Which of :data:`KNOWN` the mutation ``path = value`` is."""
    text = repr(value)
    numbers = (
        value
        if isinstance(value, list)
        else list(value.values())
        if isinstance(value, dict)
        else [value]
    )
    tests = (
        path == ("localize", "steps") and isinstance(value, int) and value > 1000,
        path == ("localize", "resolution") and value not in (None, DELETE, 8, 16, 32, 64),
        any(isinstance(n, int) and n >= 2**63 for n in numbers) and "seed" in repr(path) + text,
        path == ("evidence", "detectors") and "options" in text,
        isinstance(value, str | dict) and len(text) > 255 and "/" in text,
        value in PARTIAL_MODELS,
        path[-1] in ("model", "scorer") and isinstance(value, str) and is_hub_id(value),
        path == ("evidence", "detectors") and any(name in text for name in FAILING_IMPORTS),
    )
    return [why for why, hit in zip(KNOWN, tests, strict=True) if hit]


@dataclass
class Case:
    """One generated recipe and how the commands are called on it."""

    index: int
    text: str
    labels: list[str] = field(default_factory=list)
    known: list[str] = field(default_factory=list)
    allow_code: bool = False
    prompt_dir: bool = False


def _set(data: Any, path: tuple, value: Any) -> bool:
    """Set (or, for :data:`DELETE`, remove) the value at ``path``; False where the recipe has
    no such place any more (an earlier mutation removed it)."""
    node = data
    for part in path[:-1]:
        if isinstance(node, dict) and part not in node and isinstance(part, str):
            node[part] = {}
        if not (isinstance(node, dict) and part in node) and not (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        ):
            return False
        node = node[part]
    if not isinstance(node, dict):
        return False
    if value is DELETE:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return True


def semantic_case(index: int, seed: int, syntactic_share: float = 0.2) -> Case:
    """The ``index``-th case of the run ``seed``: 1-4 field mutations of the toy recipe, and
    sometimes syntactic ones on its text."""
    rng = random.Random(f"{seed}:{index}")
    data = yaml.safe_load(TOY_RECIPE)
    case = Case(index, "", allow_code=rng.random() < 0.5, prompt_dir=rng.random() < 0.2)
    for _ in range(rng.randint(1, 4)):
        path = rng.choice(list(VALUES))
        values = VALUES[path]
        value = values(rng) if callable(values) else rng.choice(values)
        if not _set(data, path, value):
            continue
        shown = "(deleted)" if value is DELETE else _short(value)
        case.labels.append(f"{'.'.join(map(str, path))} = {shown}")
        case.known += known_reasons(path, value)
    case.text = _dump(data)
    if rng.random() < syntactic_share:
        case.text, done = syntactic(case.text, rng)
        case.labels += done
    return case


def mutated(path: tuple, value: Any, allow_code: bool = False) -> Case:
    """The toy recipe with the one mutation ``path = value``."""
    data = yaml.safe_load(TOY_RECIPE)
    assert _set(data, path, value), path
    text = _dump(data)
    return Case(-1, text, [f"{'.'.join(map(str, path))} = {_short(value)}"], allow_code=allow_code)


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=4096)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


# --- syntactic mutations (the text) ----------------------------------------------------------

BOMB = "bomb:\n  l0: &l0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)
)
TOKENS = ["version", "name", "base", "model", "edits", "kind", "concept", "prompts", "target",
          "targets", "localize", "window", "seeds", "layers", "scorer", "edit", "tokens", "lambda",
          "export", "hub", "repo", "<<", "*a", "&a x", "!!python/object", "{", "[", "'", '"',
          "\t", "\x00", ": ", "- ", "#", "\n"]  # fmt: skip


def syntactic(text: str, rng: random.Random) -> tuple[str, list[str]]:
    """``text`` with 1-4 text mutations (bombs, key floods, values, tokens, cuts, deep nesting)
    up to and past the YAML reader's limits, and what was done."""
    done = []
    for _ in range(rng.randint(1, 4)):
        lines = text.split("\n")
        row = rng.randrange(len(lines))
        line = lines[row]
        indent, key = line[: len(line) - len(line.lstrip())], line.split(":")[0]
        kind = rng.choice(["bomb", "flood", "value", "token", "delete", "deep"])
        done.append(f"text: {kind} at line {row + 1}")
        if kind == "bomb":
            if ":" in line:
                lines[row] = f"{key}: *l{rng.randint(0, 8)}"
            text = BOMB.replace("bomb:\n", "anchors:\n") + "\n".join(lines)
        elif kind == "flood":
            flood = "".join(f"{indent}k{i}: {i}\n" for i in range(rng.randint(1, MAX_KEYS + 50)))
            lines[row] = line + "\n" + flood
            text = "\n".join(lines)
        elif kind == "value" and ":" in line:
            value = yaml.safe_dump(random_value(rng), default_flow_style=True).strip()
            lines[row] = f"{key}: " + value.replace("\n", " ")
            text = "\n".join(lines)
        elif kind == "token":
            at = rng.randint(0, len(text))
            text = text[:at] + rng.choice(TOKENS) + text[at:]
        elif kind == "delete":
            start = rng.randint(0, len(text))
            text = text[:start] + text[start + rng.randint(1, 40) :]
        elif kind == "deep":
            depth = rng.randint(1, 3 * MAX_DEPTH)
            lines[row] = f"{key}: " + "[" * depth + "]" * depth
            text = "\n".join(lines)
    return text, done


def random_value(rng: random.Random, leaves: int = 30) -> Any:
    """A random YAML-able value: scalars, lists and mappings nested a few levels."""
    kind = rng.randrange(7 if leaves > 1 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 1, 2**63, -(2**64), rng.randint(-(10**6), 10**6)])
    if kind == 2:
        return rng.choice([0.0, -0.5, 1e308, 5e-324, float("nan"), float("inf"), rng.random()])
    if kind in (3, 4):
        alphabet = "abc {}/:\\.-_\x00\t\x1b é\U0001f600"
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
    size = rng.randint(0, 5)
    if kind == 5:
        return [random_value(rng, leaves // max(size, 1)) for _ in range(size)]
    return {
        str(random_value(rng, 1))[:8]: random_value(rng, leaves // max(size, 1))
        for _ in range(size)
    }
