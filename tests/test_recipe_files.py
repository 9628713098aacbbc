"""What a recipe may make locopack read or run: prompt files under its folder only, regular files
only, no code without ``--allow-code``, no secret of this machine, no model from the working
directory.  Each case runs ``locopack validate`` (the checks ``build`` runs first) and expects
one line naming the field, never a hang or a traceback."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from locopack.errors import RecipeError, SecretError
from locopack.recipe import load_recipe
from locopack.recipe.checks import preflight
from locopack.secret_scan import check_folder, known_secrets
from tests.test_recipe_cli import assert_reported, run_cli

ROOT = Path(__file__).resolve().parent.parent
TOY = ROOT / "recipes" / "toy"
FAKE_TOKEN = "hf_" + "Zq8" * 12

RECIPE = f"""\
version: 1
name: files-check
base:
  model: {TOY / "toy-world"}
edits:
  - kind: erase
    attribute: style
    concept: stripes
    prompts: ["a red circle on a {{concept}} background"]
    target: a red circle on a plain background
localize:
  window: 2
  scorer: {TOY / "toy-clip"}
"""  # line 4 base.model, line 13 localize.scorer


def write(folder: Path, extra: str = "", text: str = RECIPE) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(text + extra, encoding="utf-8")
    return path


def neighbours_from(source: str) -> str:
    return f"edit:\n  neighbours: {{count: 1, source: {source!r}}}\n"


def unrelated_from(source: str) -> str:
    return f"evidence:\n  sample_unrelated: {{count: 1, source: {source!r}}}\n"


def test_the_plain_recipe_is_valid(tmp_path):
    code, out, err = run_cli("validate", "--offline", str(write(tmp_path)))
    assert code == 0, err


# --- prompt files ------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [neighbours_from, unrelated_from])
@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("/etc/passwd", "outside it; move the file beside the recipe"),
        ("/etc/shadow", "outside it"),
        ("/proc/self/environ", "in /proc, which locopack never reads"),
        ("/dev/zero", "in /dev, which locopack never reads"),
        ("../outside.txt", "outside it"),
    ],
)
def test_a_prompt_file_outside_the_recipes_folder_is_refused(tmp_path, make, source, fragment):
    (tmp_path / "outside.txt").write_text("a red square\n")
    folder = tmp_path / "recipes"
    folder.mkdir()
    field = "edit.neighbours" if make is neighbours_from else "evidence.sample_unrelated"
    code, out, err = run_cli("validate", "--offline", str(write(folder, make(source))))
    assert_reported(code, out, err, [field, fragment])


def test_a_link_beside_the_recipe_to_a_file_outside_is_refused(tmp_path):
    (tmp_path / "secret.txt").write_text("a private line\n")
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "prompts.txt").symlink_to(tmp_path / "secret.txt")
    path = write(folder, neighbours_from("prompts.txt"))
    assert_reported(*run_cli("validate", "--offline", str(path)), ["edit.neighbours", "outside"])


def test_a_folder_the_user_names_is_allowed(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "prompts.txt").write_text("a green square on a dots background\n")
    folder = tmp_path / "recipes"
    folder.mkdir()
    path = write(folder, neighbours_from(str(shared / "prompts.txt")))
    assert_reported(*run_cli("validate", "--offline", str(path)), ["outside it"])
    code, out, err = run_cli("--prompt-dir", str(shared), "validate", "--offline", str(path))
    assert code == 0, err
    assert "LOCOPACK_PROMPT_DIRS" not in os.environ  # set for the command only


def test_a_fifo_as_prompt_file_is_refused_at_once(tmp_path):
    os.mkfifo(tmp_path / "prompts.txt")
    path = write(tmp_path, neighbours_from("prompts.txt"))
    assert_reported(*run_cli("validate", "--offline", str(path)), ["a regular file", "a FIFO"])


def test_a_socket_as_prompt_file_is_refused(tmp_path):
    where = tmp_path / "prompts.txt"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(where))
        path = write(tmp_path, unrelated_from("prompts.txt"))
        code, out, err = run_cli("validate", "--offline", str(path))
    assert_reported(code, out, err, ["evidence.sample_unrelated", "a socket"])


# --- model and scorer folders ---------------------------------------------------------------------


def _clip_copy(tmp_path: Path) -> Path:
    scorer = tmp_path / "scorer"
    scorer.mkdir()
    for item in (TOY / "toy-clip").iterdir():
        (scorer / item.name).symlink_to(item)
    (scorer / "config.json").unlink()
    return scorer


def test_a_fifo_as_the_scorers_config_does_not_hang(tmp_path):
    scorer = _clip_copy(tmp_path)
    os.mkfifo(scorer / "config.json")
    path = write(tmp_path, text=RECIPE.replace(str(TOY / "toy-clip"), str(scorer)))
    assert_reported(
        *run_cli("validate", "--offline", str(path)),
        ["recipe.yaml:13: localize.scorer", "a FIFO"],
    )


def test_a_device_as_the_scorers_config_is_refused(tmp_path):
    scorer = _clip_copy(tmp_path)
    (scorer / "config.json").symlink_to("/dev/zero")
    path = write(tmp_path, text=RECIPE.replace(str(TOY / "toy-clip"), str(scorer)))
    assert_reported(
        *run_cli("validate", "--offline", str(path)), ["localize.scorer", "a character device"]
    )


def test_a_fifo_as_the_models_config_is_refused(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for item in (TOY / "toy-world").iterdir():
        if item.name != "unet":
            (model / item.name).symlink_to(item)
    (model / "unet").mkdir()
    os.mkfifo(model / "unet" / "config.json")
    path = write(tmp_path, text=RECIPE.replace(str(TOY / "toy-world"), str(model)))
    assert_reported(*run_cli("validate", "--offline", str(path)), ["base.model", "a FIFO"])


def test_a_fifo_as_the_model_is_refused(tmp_path):
    os.mkfifo(tmp_path / "model")
    path = write(tmp_path, text=RECIPE.replace(str(TOY / "toy-world"), str(tmp_path / "model")))
    assert_reported(*run_cli("validate", "--offline", str(path)), ["base.model", "a FIFO"])


def test_relative_paths_resolve_beside_the_recipe_not_in_the_working_directory(
    tmp_path, monkeypatch
):
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "toy-clip").symlink_to(TOY / "toy-clip")
    text = RECIPE.replace(str(TOY / "toy-world"), "./toy-world")
    text = text.replace(str(TOY / "toy-clip"), "./toy-clip")
    path = write(folder, text=text)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "toy-world").symlink_to(TOY / "toy-world")  # a model that must not be used
    monkeypatch.chdir(elsewhere)
    with pytest.raises(RecipeError, match=r"recipe\.yaml:4: base\.model: .*no such folder beside"):
        preflight(load_recipe(path), offline=True)
    (folder / "toy-world").symlink_to(TOY / "toy-world")
    recipe = load_recipe(path)
    preflight(recipe, offline=True)
    assert Path(recipe.local_path("./toy-world")).parent == folder


# --- code a recipe names --------------------------------------------------------------------------

HOSTILE = ["os:system", "subprocess:getoutput", "builtins:eval", "json:loads", "shutil:rmtree"]


@pytest.mark.parametrize("name", HOSTILE)
def test_a_detector_naming_code_is_refused_without_allow_code(tmp_path, name):
    path = write(tmp_path, f"evidence:\n  detectors: [clip, {name!r}]\n")
    assert_reported(
        *run_cli("validate", "--offline", str(path)),
        ["evidence.detectors[1]: expected a built-in detector", "--allow-code"],
    )


@pytest.mark.parametrize("name", HOSTILE)
def test_with_allow_code_a_callable_that_is_no_detector_is_refused(tmp_path, name):
    path = write(tmp_path, f"evidence:\n  detectors: [{name!r}]\n")
    code, out, err = run_cli("--allow-code", "validate", "--offline", str(path))
    assert_reported(code, out, err, ["evidence.detectors[0]"])
    assert "--allow-code" not in err


def test_with_allow_code_a_plugin_is_checked_without_importing_it(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "my_detector.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "def bright(images, prompts, *, level=128):\n"
        "    return [{'bright': 1.0} for _ in images]\n"
        "def one_argument(images):\n"
        "    return []\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    good = write(tmp_path, "evidence:\n  detectors: [my_detector:bright]\n")
    code, out, err = run_cli("--allow-code", "validate", "--offline", str(good))
    assert code == 0, err
    assert not marker.exists()  # validate imported nothing
    assert "LOCOPACK_ALLOW_CODE" not in os.environ  # set for the command only
    for name, fragment in [("one_argument", "fewer"), ("absent", "expected a function")]:
        path = write(tmp_path, f"evidence:\n  detectors: [my_detector:{name}]\n")
        code, out, err = run_cli("--allow-code", "validate", "--offline", str(path))
        assert_reported(code, out, err, ["evidence.detectors[0]", fragment])


def test_build_refuses_a_plugin_before_loading_anything(tmp_path):
    path = write(tmp_path, "evidence:\n  detectors: ['os:system']\n")
    code, out, err = run_cli("build", str(path), "--out", str(tmp_path / "out"))
    assert_reported(code, out, err, ["evidence.detectors[0]", "--allow-code"])
    assert not (tmp_path / "out").exists()


# --- secrets --------------------------------------------------------------------------------------


def test_a_recipe_or_prompt_file_holding_the_hub_token_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    path = write(tmp_path, f"description: 'my token is {FAKE_TOKEN}'\n")
    code, out, err = run_cli("validate", "--offline", str(path))
    assert_reported(code, out, err, ["recipe.yaml: holds the environment variable HF_TOKEN"])
    assert FAKE_TOKEN not in out + err
    (tmp_path / "prompts.txt").write_text(f"a red square {FAKE_TOKEN}\n")
    path = write(tmp_path, neighbours_from("prompts.txt"))
    code, out, err = run_cli("validate", "--offline", str(path))
    assert_reported(code, out, err, ["edit.neighbours.source: holds", "HF_TOKEN"])
    assert FAKE_TOKEN not in out + err


def test_credential_like_variables_and_stored_tokens_count_as_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "correct horse battery")
    monkeypatch.setenv("INNOCENT", "ghp_" + "a" * 36)  # the shape of a GitHub token
    monkeypatch.setenv("PATH_LIKE", "/usr/local/bin:/usr/bin")
    from huggingface_hub import constants

    (tmp_path / "token").write_text(FAKE_TOKEN)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    found = known_secrets()
    assert found["the environment variable MY_SERVICE_PASSWORD"] == b"correct horse battery"
    assert found["the environment variable INNOCENT"].startswith(b"ghp_")
    assert found["the Hub token"] == FAKE_TOKEN.encode()
    assert b"/usr/local/bin:/usr/bin" not in found.values()


def test_a_release_file_holding_a_secret_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    (tmp_path / "evidence").mkdir()
    (tmp_path / "evidence" / "a.png").write_bytes(b"\x89PNG" + FAKE_TOKEN.encode() + b"\0")
    (tmp_path / "ok.json").write_text("{}")
    check_folder(tmp_path, ["ok.json"])
    with pytest.raises(SecretError, match=r"evidence/a\.png: holds the environment variable HF"):
        check_folder(tmp_path, ["ok.json", "evidence/a.png"])


def test_a_secret_across_a_read_chunks_seam_is_found(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    seam = (1 << 24) - len(FAKE_TOKEN) // 2  # the file is read 16 MiB at a time
    (tmp_path / "merged.safetensors").write_bytes(b"\0" * seam + FAKE_TOKEN.encode() + b"\0")
    with pytest.raises(SecretError, match=r"merged\.safetensors: holds"):
        check_folder(tmp_path, ["merged.safetensors"])
