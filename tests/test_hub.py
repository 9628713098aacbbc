"""Hub push and pull against a Hub stand-in on loopback, driven by the real huggingface_hub client.

``HF_ENDPOINT`` is frozen when huggingface_hub is imported, so every client runs in a subprocess
with the stand-in's URL, ``HF_HUB_DISABLE_XET=1`` (the stand-in has no Xet storage), a test token
and its own ``HF_HOME``.  Every subprocess's output is checked for the token.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from locopack.errors import HubError
from locopack.hub_ref import is_hub_ref, parse_ref
from locopack.release.history import read_history
from locopack.release.layout import release_files

from .hub_standin import HubStandin

TOKEN = "standin-LocopackToken0123456789"
WRONG = "standin-SomebodyElsesToken98765"
EXAMPLE = Path(__file__).parents[1] / "recipes" / "examples" / "sd15-remove-van-gogh.yaml"
RECIPE_V1 = EXAMPLE.read_text()
RECIPE_V2 = RECIPE_V1.replace("lambda: 0.1 ", "lambda: 0.2 ")
assert RECIPE_V2 != RECIPE_V1
WEIGHTS = "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    with HubStandin(tmp_path_factory.mktemp("standin"), {TOKEN: "tester"}) as hub:
        yield hub
    assert not hub.problems, hub.problems


@pytest.fixture
def env(standin, tmp_path):
    standin.clear_faults()
    hf_home = tmp_path / "hf-home"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    environ.update(
        HF_ENDPOINT=standin.url,
        HF_HUB_DISABLE_XET="1",
        HF_TOKEN=TOKEN,
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_TELEMETRY="1",
        # one torch thread, as in the tests' own process (conftest): images made here and there
        # are compared byte for byte, and a different thread count may round differently
        LOCOPACK_THREADS="1",
    )
    return environ


def _run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    # the timeout only guards against a hang: a build here takes 1-2 minutes on a busy machine
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1200)
    assert TOKEN not in done.stdout + done.stderr  # no log line ever carries the token
    return done


def cli(env, *args: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-c", "from locopack.cli import main; main()", *args], env)


def python(env, code: str):
    """Run ``code`` in a fresh interpreter; it prints one JSON value, which is returned."""
    done = _run([sys.executable, "-c", code], env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


INSPECT = """
import hashlib, json, pathlib
from huggingface_hub import HfApi, snapshot_download
api, repo, rev = HfApi(), {repo!r}, {rev!r}
refs = api.list_repo_refs(repo)
snap = pathlib.Path(snapshot_download(repo, revision=rev))
print(json.dumps({{
    "files": sorted(api.list_repo_files(repo, revision=rev)),
    "tags": {{t.name: t.target_commit for t in refs.tags}},
    "branches": {{b.name: b.target_commit for b in refs.branches}},
    "commits": [[c.commit_id, c.title] for c in api.list_repo_commits(repo, revision=rev)],
    "sha256": {{str(p.relative_to(snap)): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in snap.rglob("*") if p.is_file()}},
}}))
"""


def inspect(env, repo: str, rev: str = "main") -> dict:
    """What the official client sees at ``rev``: files, refs, history and downloaded hashes."""
    return python(env, INSPECT.format(repo=repo, rev=rev))


def make_release(folder: Path, recipe: str = RECIPE_V1, seed: int = 0, merged: bool = True):
    """A release that passes the audit, made without a model: a seeded delta and its adapter,
    a card, merged/ configs, a local cache and a history entry recording every file."""
    import torch

    from locopack.delta import WeightDelta

    folder.mkdir(parents=True)
    (folder / "README.md").write_text("---\nlicense: mit\ntags: [locopack]\n---\n# a release\n")
    gen = torch.Generator().manual_seed(seed)
    up, down = torch.randn(64, 4, generator=gen), torch.randn(4, 32, generator=gen)
    if merged:
        (folder / "merged" / "unet").mkdir(parents=True)
        (folder / "merged" / "model_index.json").write_text("{}")
        (folder / "merged" / "unet" / "config.json").write_text('{"sample_size": 8}')
    (folder / "cache").mkdir()
    (folder / "cache" / "window.json").write_text("{}")  # stays local
    delta = WeightDelta({"mid.attn2.to_k": up @ down}, {"denoiser": "unet", "sites": ["mid"]})
    return seal(folder, recipe, delta)


def seal(folder: Path, recipe: str, delta) -> Path:
    """Write ``recipe``, ``delta`` and its adapter into ``folder``, then a history entry
    (what the audit reads of one) recording every file there."""
    from locopack.export import write_adapter
    from locopack.release.history import write_history
    from locopack.release.layout import hashed_files
    from locopack.release.records import HistoryEntry

    (folder / "recipe.yaml").write_text(recipe)
    delta.save(folder / "delta.safetensors")
    manifest = write_adapter(delta, folder, max_rank=64, energy=0.99999999)
    entry = HistoryEntry(
        index=0,
        prev=None,
        recipe_name=__import__("yaml").safe_load(recipe)["name"],
        recipe_sha256=hashlib.sha256(recipe.encode()).hexdigest(),
        recipe_text=recipe,
        delta_sha256=delta.sha256(),
        adapter_tolerance=manifest.max_relative_error,
        files=hashed_files(folder),
    )
    entry.hash = entry.content_hash()
    write_history(folder, [entry])
    return folder


def hashes(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(folder)): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def tag_of(recipe: str) -> tuple[str, str]:
    short = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    return f"sd15-remove-van-gogh-{short}", short


def test_push_uploads_one_tagged_commit_that_downloads_byte_identical(standin, env, tmp_path):
    folder = make_release(tmp_path / "release")
    before = len(standin.requests)
    done = cli(env, "push", str(folder), "--repo", "org/one")
    assert done.returncode == 0, done.stderr
    tag, short = tag_of(RECIPE_V1)
    assert f"{standin.url}/org/one" in done.stdout and tag in done.stdout

    seen = inspect(env, "org/one", tag)
    local = release_files(folder)
    assert "cache/window.json" not in local and "merged/unet/config.json" in local
    assert seen["files"] == sorted([*local, ".gitattributes"])
    assert {k: v for k, v in seen["sha256"].items() if k != ".gitattributes"} == {
        name: digest for name, (digest, _) in hashes(folder).items() if name in local
    }
    (head, title), (_, first) = seen["commits"]
    assert title == f"locopack sd15-remove-van-gogh {short}" and first == "initial commit"
    assert seen["tags"] == {tag: head} and seen["branches"] == {"main": head}

    pushed = standin.requests[before:]
    assert [r["status"] for r in pushed if r["path"] == "/api/models/org/one/commit/main"] == [200]
    uploads = [r for r in pushed if r["method"] == "PUT"]  # the delta and the adapter
    assert len(uploads) == 2
    assert all(r["path"].startswith("/lfs-upload/") and not r["auth"] for r in uploads)
    assert standin.commit("org/one", head)["files"][WEIGHTS]["lfs"]


def test_a_second_version_adds_a_commit_and_a_tag_and_drops_stale_files(standin, env, tmp_path):
    v1 = make_release(tmp_path / "v1")
    v2 = make_release(tmp_path / "v2", RECIPE_V2, seed=1, merged=False)
    assert cli(env, "push", str(v1), "--repo", "org/two").returncode == 0
    assert cli(env, "push", str(v2), "--repo", "org/two").returncode == 0
    tag1, _ = tag_of(RECIPE_V1)
    tag2, short2 = tag_of(RECIPE_V2)
    seen = inspect(env, "org/two", tag2)
    assert len(seen["commits"]) == 3 and seen["commits"][0][1].endswith(short2)
    assert seen["tags"][tag2] == seen["commits"][0][0]
    assert seen["tags"][tag1] == seen["commits"][1][0]
    assert not [f for f in seen["files"] if f.startswith("merged/")]  # mirrors the folder
    assert "merged/model_index.json" in inspect(env, "org/two", tag1)["files"]

    again = cli(env, "push", str(v2), "--repo", "org/two")  # the same release: a no-op
    assert again.returncode == 0 and "already on the Hub" in again.stdout

    other = make_release(tmp_path / "v2-other", RECIPE_V2, seed=2, merged=False)
    clash = cli(env, "push", str(other), "--repo", "org/two")  # other weights, same recipe
    assert clash.returncode == 1 and f"tag '{tag2}' already names commit" in clash.stderr
    assert "--tag" in clash.stderr
    assert len(inspect(env, "org/two")["commits"]) == 3


def test_a_branch_gets_the_commit_and_a_bad_tag_is_refused_before_upload(standin, env, tmp_path):
    folder = make_release(tmp_path / "release")
    bad = cli(env, "push", str(folder), "--repo", "org/branchy", "--tag", "no good")
    assert bad.returncode == 1 and "not a valid tag name" in bad.stderr
    assert not (standin.root / "repos" / "org" / "branchy").exists()  # nothing was sent
    done = cli(
        env, "push", str(folder), "--repo", "org/branchy", "--branch", "dev/x", "--tag", "v1"
    )
    assert done.returncode == 0, done.stderr
    seen = inspect(env, "org/branchy", "dev/x")
    assert seen["tags"] == {"v1": seen["branches"]["dev/x"]}
    assert seen["commits"][0][0] == seen["branches"]["dev/x"] != seen["branches"]["main"]
    assert len(seen["commits"]) == 2 and WEIGHTS in seen["files"]


def test_a_release_that_fails_its_audit_is_not_pushed(standin, env, tmp_path):
    folder = make_release(tmp_path / "release")
    card = (folder / "README.md").read_text()
    (folder / "README.md").write_text(card + "edited after the build\n")
    (folder / "payload.txt").write_text("added after the build")
    before = len(standin.requests)
    done = cli(env, "push", str(folder), "--repo", "org/audited")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert (
        "not pushed, the release fails its audit (files: README.md: sha256 differs" in done.stderr
    )
    (folder / "README.md").write_text(card)
    (folder / "payload.txt").unlink()
    (tmp_path / "secret.txt").write_text("kept beside the release")
    (folder / "notes.txt").symlink_to("../secret.txt")
    done = cli(env, "push", str(folder), "--repo", "org/audited")
    assert done.returncode == 1
    assert "fails its audit (files: notes.txt: a symbolic link (to ../secret.txt)" in done.stderr
    assert standin.requests[before:] == []  # nothing was sent, not even the repo's creation
    (folder / "notes.txt").unlink()
    assert cli(env, "push", str(folder), "--repo", "org/audited").returncode == 0
    assert "notes.txt" not in inspect(env, "org/audited")["files"]


def test_a_wrong_token_is_one_line_and_exit_1(env, tmp_path):
    folder = make_release(tmp_path / "release")
    done = cli({**env, "HF_TOKEN": WRONG}, "push", str(folder), "--repo", "org/wrong")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: authentication failed for org/wrong: check HF_TOKEN or `hf auth login`"
    ]
    assert WRONG not in done.stdout + done.stderr and "Traceback" not in done.stderr


PUSH = """
import json
from locopack.errors import HubError
from locopack.hub.push import push
sleeps = []
try:
    result = push({folder!r}, {repo!r}, sleep=sleeps.append)
    print(json.dumps({{"commit": result.commit, "tag": result.tag, "sleeps": sleeps}}))
except HubError as err:
    print(json.dumps({{"error": str(err), "kind": type(err).__name__, "sleeps": sleeps}}))
"""


def test_commit_500s_are_retried_with_backoff(standin, env, tmp_path):
    folder = make_release(tmp_path / "release")
    standin.fail("commit", "500", times=2)
    out = python(env, PUSH.format(folder=str(folder), repo="org/flaky"))
    assert out["sleeps"] == [0.5, 1.0] and "commit" in out
    seen = inspect(env, "org/flaky")
    assert seen["tags"] == {out["tag"]: out["commit"]} == {tag_of(RECIPE_V1)[0]: out["commit"]}
    assert len(seen["commits"]) == 2


def test_a_connection_reset_is_retried(standin, env, tmp_path):
    folder = make_release(tmp_path / "release")
    before = len(standin.requests)
    standin.fail("lfs_upload", "reset")
    standin.fail("commit", "reset")
    out = python(env, PUSH.format(folder=str(folder), repo="org/reset"))
    assert "commit" in out, out
    assert out["sleeps"] == [0.5]  # the commit reset; the LFS reset the client retries itself
    puts = [r["status"] for r in standin.requests[before:] if r["method"] == "PUT"]
    assert sorted(puts, key=str) == [200, 200, "reset"]  # two files, one upload retried
    seen = inspect(env, "org/reset")
    assert seen["sha256"][WEIGHTS] == hashes(folder)[WEIGHTS][0]


def test_too_many_failures_leave_folder_and_remote_as_they_were(standin, env, tmp_path):
    folder = make_release(tmp_path / "release")
    before = hashes(folder)
    standin.fail("commit", "500", times=4)  # retries=3: four attempts
    out = python(env, PUSH.format(folder=str(folder), repo="org/down"))
    assert out["sleeps"] == [0.5, 1.0, 2.0]
    message = out["error"]
    assert "\n" not in message and "commit failed after 4 attempts" in message
    assert "500" in message and "no commit" in message
    assert out["kind"] == "HubTransientError"  # a ConnectionError too: try again later
    assert hashes(folder) == before
    seen = inspect(env, "org/down")
    assert [title for _, title in seen["commits"]] == ["initial commit"] and not seen["tags"]


def test_a_failed_tag_is_named_and_the_next_push_only_tags(standin, env, tmp_path):
    folder = make_release(tmp_path / "release")
    standin.fail("tag", "500", times=4)
    out = python(env, PUSH.format(folder=str(folder), repo="org/untagged"))
    assert "tag failed after 4 attempts" in out["error"] and out["kind"] == "HubTransientError"
    assert "committed as" in out["error"] and "push again to tag" in out["error"]
    seen = inspect(env, "org/untagged")
    assert len(seen["commits"]) == 2 and not seen["tags"]
    again = python(env, PUSH.format(folder=str(folder), repo="org/untagged"))
    seen = inspect(env, "org/untagged")
    assert len(seen["commits"]) == 2  # no second upload
    assert seen["tags"] == {again["tag"]: again["commit"]}
    assert f"committed as {again['commit'][:12]}" in out["error"]  # the commit now tagged


def test_the_token_is_never_written_or_printed(standin, env, tmp_path):
    folder = make_release(tmp_path / "release")
    assert cli(env, "push", str(folder), "--repo", "org/secret").returncode == 0
    inspect(env, "org/secret")
    standin.fail("commit", "500", times=4)
    python(env, PUSH.format(folder=str(folder), repo="org/secret2"))
    places = [Path(env["HF_HOME"]), folder, standin.root, tmp_path]
    files = {p for place in places for p in place.rglob("*") if p.is_file()}
    assert len(files) > 10
    assert not [p for p in files if TOKEN.encode() in p.read_bytes()]


def test_missing_repos_revisions_and_recipes_are_clear_errors(standin, env, tmp_path):
    code = """
import json
from locopack.errors import HubError
from locopack.hub.push import resolve_release
out = []
for ref in ("org/none@v1", "org/one@no-such-tag"):
    try:
        resolve_release(ref, sleep=lambda s: None)
    except HubError as err:
        out.append([str(err), type(err).__name__, isinstance(err, FileNotFoundError)])
print(json.dumps(out))
"""
    assert cli(env, "push", str(make_release(tmp_path / "r")), "--repo", "org/one").returncode == 0
    refs = ("org/none@v1", "org/one@no-such-tag")
    for ref, (message, kind, missing) in zip(refs, python(env, code), strict=True):
        assert message.startswith(f"{ref}: no such repo or revision on the Hub")
        assert kind == "HubNotFoundError" and missing
    bare = tmp_path / "bare"
    bare.mkdir()
    done = cli(env, "push", str(bare), "--repo", "org/bare")
    assert done.returncode == 1 and "no recipe.yaml" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "ref, repo, revision",
    [
        ("org/name", "org/name", None),
        ("org/name@v1", "org/name", "v1"),
        ("Org-1/my.model_v2@sd15-x-0123456789ab", "Org-1/my.model_v2", "sd15-x-0123456789ab"),
        ("org/name@refs/pr/1", "org/name", "refs/pr/1"),
        (" org/name@0123abc ", "org/name", "0123abc"),
    ],
)
def test_parse_ref_accepts(ref, repo, revision):
    assert parse_ref(ref) == (repo, revision)
    assert is_hub_ref(ref)


@pytest.mark.parametrize(
    "ref",
    ["name", "org/name/extra", "org/name@", "@v1", "org//name", "./org/name", "/abs/path",
     "org/na me", "org/name@a@b", "org--x/name", "org/name..x", "org/name.", "", "~/x/y"],
)  # fmt: skip
def test_parse_ref_refuses(ref):
    with pytest.raises(HubError, match="not a Hub reference"):
        parse_ref(ref)
    assert not is_hub_ref(ref)
    assert not is_hub_ref(Path("org/name"))  # a Path is always local


APPLY_RECIPE = """
version: 1
name: hub-apply-test
base: {model: ./x}
edits:
  - kind: erase
    attribute: object
    concept: cat
    prompts: ["a photo of a cat", "a cat on a street", "a painting of a cat"]
    target: "a photo of a dog"
edit: {lambda: 0.05, tokens: concept}
"""

APPLY = """
import json, torch, locopack
from locopack.models import load_pipeline
def run(pipe):
    g = torch.Generator().manual_seed(0)
    unet = pipe.unet
    states = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    size = unet.config.sample_size
    sample = torch.randn(2, unet.config.in_channels, size, size, generator=g)
    with torch.no_grad():
        return unet(sample, timestep=torch.tensor([500, 500]), encoder_hidden_states=states).sample
pipes = [load_pipeline({twin!r})[0] for _ in range(3)]
base = run(pipes[0])
hub = locopack.apply(pipes[1], {ref!r})
locopack.apply(pipes[2], {folder!r})
a, b = run(pipes[1]), run(pipes[2])
print(json.dumps({{"diff": (a - b).abs().max().item(), "edit": (b - base).abs().max().item(),
                   "kind": hub.kind, "source": str(hub.source)}}))
"""


@pytest.mark.slow  # ~20 s: a fresh interpreter imports torch and diffusers
def test_apply_from_the_hub_reproduces_the_local_adapter(standin, env, tmp_path):
    from locopack.edit import compute_delta
    from locopack.models import LoadedBase, get_family, load_pipeline
    from locopack.recipe import parse_recipe

    twin = get_family("sd1").save_twin(tmp_path / "twin", seed=0)
    pipe, family = load_pipeline(str(twin))
    sites = [s.path for s in family.sites(pipe.unet)]
    delta = compute_delta(
        LoadedBase(pipe, family), parse_recipe(APPLY_RECIPE, "r.yaml"), sites[1:3]
    )
    folder = tmp_path / "release"
    folder.mkdir()
    seal(folder, APPLY_RECIPE, delta)
    done = cli(env, "push", str(folder), "--repo", "org/applied", "--tag", "v1")
    assert done.returncode == 0, done.stderr
    out = python(env, APPLY.format(twin=str(twin), ref="org/applied@v1", folder=str(folder)))
    assert out["kind"] == "adapter" and env["HF_HOME"] in out["source"]
    assert out["diff"] <= 1e-6 and out["edit"] > 1e-4  # same outputs, and the edit is real


@pytest.mark.slow
def test_stacked_releases_pulled_from_the_hub_audit_as_one_chain(standin, env, tmp_path):
    from click.testing import CliRunner

    from locopack.cli import cli as locopack_cli

    root = Path(__file__).resolve().parents[1]
    runner = CliRunner()
    assert runner.invoke(locopack_cli, ["twin", "sd1", str(tmp_path / "twin")]).exit_code == 0
    text = (root / "recipes" / "twin" / "sd1-erase-van-gogh.yaml").read_text()
    text = text.replace("./out/tiny-sd1/scorer", str(tmp_path / "twin" / "scorer"))
    first = (
        text.replace("./out/tiny-sd1", str(tmp_path / "twin")).replace(
            "twin-sd1-erase-van-gogh", "first"
        )
        + "export:\n  merged: true\n"
    )
    second = (
        text.replace("./out/tiny-sd1", str(tmp_path / "first" / "merged"))
        .replace("twin-sd1-erase-van-gogh", "second")
        .replace("van gogh", "monet")
    )
    # build --push: the first release goes to the Hub as soon as it is built
    (tmp_path / "first.yaml").write_text(first)
    args = ["build", str(tmp_path / "first.yaml"), "--out", str(tmp_path / "first")]
    built = cli(env, *args, "--push", "org/first", "--tag", "v1")
    assert built.returncode == 0, built.stderr
    assert "pushed" in built.stdout and "tag v1" in built.stdout
    (tmp_path / "second.yaml").write_text(second)
    args = ["build", str(tmp_path / "second.yaml"), "--out", str(tmp_path / "second")]
    result = runner.invoke(locopack_cli, args)
    assert result.exit_code == 0, result.output
    pushed = cli(env, "push", str(tmp_path / "second"), "--repo", "org/stacked", "--tag", "v1")
    assert pushed.returncode == 0, pushed.stderr
    audited = cli(env, "audit", "org/stacked@v1")
    assert audited.returncode == 0, audited.stderr + audited.stdout
    assert "#0  first" in audited.stdout and "#1  second" in audited.stdout
    assert "ok    history chain: 2 entries" in audited.stdout

    # generate loads a release's merged checkpoint; an adapter-only release is a clear error
    ask = ["generate", "--prompt", "a cat", "--steps", "2", "--out"]
    local = runner.invoke(
        locopack_cli, [*ask, str(tmp_path / "local.png"), "--model", str(tmp_path / "first")]
    )
    assert local.exit_code == 0, local.output
    hub = cli(env, *ask, str(tmp_path / "hub.png"), "--model", "org/first@v1")
    assert hub.returncode == 0, hub.stderr
    assert (tmp_path / "hub.png").read_bytes() == (tmp_path / "local.png").read_bytes()
    refused = cli(env, *ask, str(tmp_path / "no.png"), "--model", "org/stacked@v1")
    assert refused.returncode == 1 and "without a merged checkpoint" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "no.png").exists()

    # a release on the Hub as base: its merged checkpoint is edited and its chain continues
    third = second.replace(str(tmp_path / "first" / "merged"), "org/first\n  revision: v1")
    (tmp_path / "third.yaml").write_text(third.replace("name: second", "name: third"))
    args = ["build", str(tmp_path / "third.yaml"), "--out", str(tmp_path / "third")]
    built = cli(env, *args)
    assert built.returncode == 0, built.stderr
    chain = runner.invoke(locopack_cli, ["audit", str(tmp_path / "third")])
    assert chain.exit_code == 0, chain.output
    assert "#0  first" in chain.output and "#1  third" in chain.output
    # the history names the commit that was loaded, not the tag, which could move
    tagged = inspect(env, "org/first", "v1")["tags"]["v1"]
    third_entry = read_history(tmp_path / "third" / "history.jsonl")[-1]
    assert third_entry.base_revision == "v1" and third_entry.base_commit == tagged


def test_a_hub_base_history_is_read_or_its_absence_known_never_guessed(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
    )

    from locopack.release.history import prior_history

    httpx = pytest.importorskip("httpx2")  # huggingface_hub 2's HTTP client

    def answer(status):
        return httpx.Response(status, request=httpx.Request("GET", "https://hub/x"))

    entry = {"index": 0, "recipe_name": "first", "recipe_sha256": "0" * 64, "recipe_text": ""}
    (tmp_path / "history.jsonl").write_text(json.dumps(entry) + "\n")
    outcomes = {
        "org/edited": tmp_path / "history.jsonl",
        "org/plain": RemoteEntryNotFoundError("404 Entry Not Found", response=answer(404)),
        "org/offline": LocalEntryNotFoundError("offline and not in the cache"),
        "org/down": HfHubHTTPError("503 Server Error", response=answer(503)),
    }

    def download(repo, filename, revision=None):
        outcome = outcomes[repo]
        if isinstance(outcome, Exception):
            raise outcome
        return str(outcome)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    assert [e.to_json() for e in prior_history("org/edited")] == [entry]
    assert prior_history("org/plain") == []
    with pytest.warns(UserWarning, match="could not check whether org/offline"):
        assert prior_history("org/offline") == []
    with pytest.raises(HubError, match="org/down: cannot read its history.jsonl.*503"):
        prior_history("org/down")


FIND_PATHS = """
import json, pathlib
from huggingface_hub import snapshot_download
snap = pathlib.Path(snapshot_download({repo!r}, revision={rev!r}))
needles = {needles!r}
found = sorted(
    f"{{p.relative_to(snap)}}: {{n}}"
    for p in snap.rglob("*") if p.is_file()
    for n in needles if n.encode() in p.read_bytes()
)
print(json.dumps({{"files": sorted(str(p.relative_to(snap)) for p in snap.rglob("*")
                                   if p.is_file()), "found": found}}))
"""


@pytest.mark.slow
def test_a_pushed_release_names_no_path_of_the_build_machine(standin, env, tmp_path):
    """Every pushed file — safetensors headers, JSON, images, the card, the history, the merged
    checkpoint's configs — is free of the build machine's folders, user name and Hub token."""
    import getpass

    from click.testing import CliRunner

    from locopack.cli import cli as locopack_cli

    root = Path(__file__).resolve().parents[1]
    assert CliRunner().invoke(locopack_cli, ["twin", "sd1", str(tmp_path / "twin")]).exit_code == 0
    text = (root / "recipes" / "twin" / "sd1-erase-van-gogh.yaml").read_text()
    recipe = text.replace("./out/tiny-sd1", "./twin") + "export:\n  merged: true\n"
    (tmp_path / "public.yaml").write_text(recipe)
    args = ["build", str(tmp_path / "public.yaml"), "--out", str(tmp_path / "releases" / "pub")]
    built = cli(env, *args, "--push", "org/public", "--tag", "v1")
    assert built.returncode == 0, built.stderr
    needles = sorted(
        {str(tmp_path), str(root), str(Path.home()), f"/{getpass.getuser()}/", os.getcwd(), TOKEN}
    )  # the build ran with HF_TOKEN set: neither the token nor a path may be in any file
    built_files = [p for p in (tmp_path / "releases" / "pub").rglob("*") if p.is_file()]
    assert not [p for p in built_files if TOKEN.encode() in p.read_bytes()]
    pulled = python(env, FIND_PATHS.format(repo="org/public", rev="v1", needles=needles))
    assert "merged/unet/config.json" in pulled["files"] and "history.jsonl" in pulled["files"]
    assert pulled["found"] == []
    # the release still knows where its base is, relative to itself, and audits in place
    entry = json.loads((tmp_path / "releases" / "pub" / "history.jsonl").read_text())
    assert entry["base_location"] == "../../twin" and entry["base_commit"] is None
    audited = cli(env, "audit", str(tmp_path / "releases" / "pub"))
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert "merged/unet equals base + delta" in audited.stdout


APPLY_DIT = """
import json, torch, locopack
from locopack.models import load_pipeline
def run(pipe, family):
    image = pipe("a painting in the style of van gogh", num_inference_steps=2, height=16,
                 width=16, generator=torch.Generator().manual_seed(0), output_type="pt",
                 **family.call_kwargs()).images
    return image.float()
(hub_pipe, family), (local_pipe, _), (base_pipe, _) = [load_pipeline({twin!r}) for _ in range(3)]
hub = locopack.apply(hub_pipe, {ref!r})
locopack.apply(local_pipe, {folder!r})
a, b, base = run(hub_pipe, family), run(local_pipe, family), run(base_pipe, family)
print(json.dumps({{"diff": (a - b).abs().max().item(), "edit": (b - base).abs().max().item(),
                   "kind": hub.kind}}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_a_joint_attention_release_is_pushed_pulled_and_applied(standin, env, tmp_path, family):
    """SD3 and FLUX releases go through the Hub like the UNet families': build --push, then
    the adapter pulled from the Hub applies exactly as the local one does."""
    from click.testing import CliRunner

    from locopack.cli import cli as locopack_cli

    root = Path(__file__).resolve().parents[1]
    twin = tmp_path / "twin"
    assert CliRunner().invoke(locopack_cli, ["twin", family, str(twin)]).exit_code == 0
    text = (root / "recipes" / "twin" / f"{family}-erase-van-gogh.yaml").read_text()
    (tmp_path / "r.yaml").write_text(text.replace(f"./out/tiny-{family}", "./twin"))
    args = ["build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "release")]
    built = cli(env, *args, "--push", f"org/{family}-release", "--tag", "v1")
    assert built.returncode == 0, built.stderr
    ref = f"org/{family}-release@v1"
    out = python(env, APPLY_DIT.format(twin=str(twin), ref=ref, folder=str(tmp_path / "release")))
    assert out["kind"] == "adapter"
    assert out["diff"] <= 1e-6 and out["edit"] > 1e-4  # the same images, and the edit is real
    audited = cli(env, "audit", ref)
    assert audited.returncode == 0, audited.stdout + audited.stderr


COMMIT_MESSAGES = """
import json
from huggingface_hub import HfApi
print(json.dumps([c.message for c in HfApi().list_repo_commits({repo!r})]))
"""


@pytest.mark.slow
def test_a_release_missing_its_requirements_is_built_but_not_published(standin, env, tmp_path):
    """Exit status 3 and a card that says what was missed; push refuses it; --allow-unmet on
    build and push publishes it and the card, the history and the commit message say so;
    a card edited to "meets" fails the audit."""
    from click.testing import CliRunner

    from locopack.cli import cli as locopack_cli

    root = Path(__file__).resolve().parents[1]
    text = (root / "recipes" / "toy" / "erase-stripes.yaml").read_text()
    text = text.replace("    held_out:", "    requirements: {ssim: 0.999}\n    held_out:", 1)
    text = text.replace("localize:\n", "localize:\n  layers: [0, 1, 2, 3]\n", 1)  # its window
    (tmp_path / "toy-world").symlink_to(root / "recipes" / "toy" / "toy-world")
    (tmp_path / "toy-clip").symlink_to(root / "recipes" / "toy" / "toy-clip")
    (tmp_path / "strict.yaml").write_text(text)
    out = tmp_path / "strict"
    args = ["--threads", "1", "build", str(tmp_path / "strict.yaml"), "--out", str(out)]
    built = CliRunner().invoke(locopack_cli, args)
    assert built.exit_code == 3, built.output
    assert "does not meet its requirements (preserve SSIM (stripes): 0.9" in built.output
    card = (out / "README.md").read_text()
    assert "## Requirements\n\n**Does not meet its requirements**: preserve SSIM" in card
    assert "--allow-unmet`: its publisher" not in card
    entry = read_history(out / "history.jsonl")[-1]
    assert entry.requirements.met is False
    assert entry.requirements.allowed_unmet is False
    audited = cli(env, "audit", str(out))  # an honest "not met" audits
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert "requirements: NOT met (the card says so)" in audited.stdout

    refused = cli(env, "push", str(out), "--repo", "org/strict")
    assert refused.returncode == 1 and "does not meet its requirements" in refused.stderr
    refused = cli(env, "push", str(out), "--repo", "org/strict", "--allow-unmet")
    assert refused.returncode == 1 and "rebuild it with --allow-unmet first" in refused.stderr
    assert not standin._repo_dir("org/strict").exists()  # nothing was sent

    allowed = CliRunner().invoke(locopack_cli, [*args, "--allow-unmet"])
    assert allowed.exit_code == 0, allowed.output
    assert "evidence: reused" in allowed.output
    assert "built with `--allow-unmet`: its publisher" in (out / "README.md").read_text()
    assert read_history(out / "history.jsonl")[-1].requirements.allowed_unmet is True
    pushed = cli(env, "push", str(out), "--repo", "org/strict", "--allow-unmet")
    assert pushed.returncode == 0, pushed.stderr
    messages = python(env, COMMIT_MESSAGES.format(repo="org/strict"))
    assert any("NOT met, published with --allow-unmet: preserve SSIM" in m for m in messages)

    card = (out / "README.md").read_text()
    (out / "README.md").write_text(
        card.replace("**Does not meet its requirements**", "**Meets its requirements**")
    )
    audited = cli(env, "audit", str(out))
    assert audited.returncode == 1
    assert "FAIL  requirements: README.md states '**Meets its requirements**" in audited.stdout


COUNT_PARSES = """
import json, sys
import locopack.recipe.schema as schema
parsed, validate = [], schema._validate
def counting(text, source, digest):
    parsed.append(source)
    return validate(text, source, digest)
schema._validate = counting  # every load_recipe and parse_recipe goes through it
from locopack.cli import main
sys.argv = ["locopack", *sys.argv[1:]]
try:
    main()
finally:
    print("PARSED " + json.dumps(parsed))
"""


def counted_cli(env, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the CLI in a subprocess; also return the sources of every recipe it parsed."""
    done = _run([sys.executable, "-c", COUNT_PARSES, *args], env)
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("PARSED ")]
    return done, json.loads(line.removeprefix("PARSED "))


@pytest.mark.slow
def test_each_command_parses_its_recipe_once(standin, env, tmp_path):
    """build --push (signing too, where model-signing is installed) reads the recipe once and
    hands it to the card, the audit, the signature and the push; card, push and sign read the
    release's recipe once each."""
    from click.testing import CliRunner

    from locopack.cli import cli as locopack_cli

    root = Path(__file__).resolve().parents[1]
    assert CliRunner().invoke(locopack_cli, ["twin", "sd1", str(tmp_path / "twin")]).exit_code == 0
    text = (root / "recipes" / "twin" / "sd1-erase-van-gogh.yaml").read_text()
    (tmp_path / "once.yaml").write_text(text.replace("./out/tiny-sd1", "./twin"))
    out = tmp_path / "once"
    args = ["--threads", "1", "build", str(tmp_path / "once.yaml"), "--out", str(out)]
    signing = []
    try:
        import model_signing  # noqa: F401

        from .test_signing import _key_pair

        signing = ["--sign-key", str(_key_pair(tmp_path, "publisher")[0])]
    except ImportError:
        pass
    built, parsed = counted_cli(env, *args, "--push", "org/once", "--tag", "v1", *signing)
    assert built.returncode == 0, built.stderr
    assert "pushed" in built.stdout and ("signed" in built.stdout) == bool(signing)
    assert parsed == [str(tmp_path / "once.yaml")]

    carded, parsed = counted_cli(env, "card", str(out))
    assert carded.returncode == 0, carded.stderr
    assert parsed == [str(out / "recipe.yaml")]
    pushed, parsed = counted_cli(env, "push", str(out), "--repo", "org/once", "--tag", "v1")
    assert pushed.returncode == 0 and "already on the Hub" in pushed.stdout, pushed.stderr
    assert parsed == [str(out / "recipe.yaml")]
    if signing:
        signed, parsed = counted_cli(env, "sign", str(out), "--private-key", signing[1])
        assert signed.returncode == 0, signed.stderr
        assert parsed == [str(out / "recipe.yaml")]
