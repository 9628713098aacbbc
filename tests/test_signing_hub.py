"""A signed release through the Hub stand-in: push --sign-key uploads the signature and the
provenance in the release's one commit; the pulled release verifies, and apply checks it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from locopack.release.layout import PROVENANCE_FILE, SIGNATURE_FILE, release_files

from .test_hub import cli, env, inspect, python, standin  # noqa: F401 - fixtures
from .test_signing import TOY_BASE, _key_pair

pytest.importorskip("model_signing")

APPLY = """
import json, torch
import locopack
from locopack.models import load_pipeline
from locopack.release.signing import SignatureError
torch.set_num_threads(1)
pipe, _ = load_pipeline({base!r})
try:
    locopack.apply(pipe, {ref!r}, public_key={wrong!r})
    refused = None
except SignatureError as err:
    refused = str(err)
applied = locopack.apply(pipe, {ref!r}, public_key={right!r})
print(json.dumps({{"refused": refused, "kind": applied.kind, "source": str(applied.source)}}))
"""


@pytest.mark.slow
def test_a_release_signed_on_push_is_pulled_verified_and_applied(toy_release, env, tmp_path):  # noqa: F811
    release = tmp_path / "release"
    shutil.copytree(toy_release, release)
    private, public, fingerprint = _key_pair(tmp_path, "publisher")
    _, other, _ = _key_pair(tmp_path, "someone-else")
    pushed = cli(
        env, "push", str(release), "--repo", "org/signed", "--tag", "v1", "--sign-key", str(private)
    )
    assert pushed.returncode == 0, pushed.stderr
    assert f"signed {release} (key {fingerprint})" in pushed.stdout
    seen = inspect(env, "org/signed", "v1")
    assert set(seen["files"]) - {".gitattributes"} == set(release_files(release))
    assert {SIGNATURE_FILE, PROVENANCE_FILE} <= set(seen["files"])
    assert len(seen["commits"]) == 2  # the repo's creation, then the release as one commit
    assert seen["commits"][0][0] == seen["tags"]["v1"]

    audited = cli(env, "audit", "org/signed@v1", "--public-key", str(public))
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert f"ok    signature: signed by key {fingerprint}" in audited.stdout
    refused = cli(env, "audit", "org/signed@v1", "--public-key", str(other))
    assert refused.returncode == 1 and "not by the given key" in refused.stderr
    last = refused.stderr.strip().splitlines()[-1]  # after the download's progress bar
    assert last.startswith("error: audit failed: signature:") and "Traceback" not in refused.stderr

    ref = "org/signed@v1"
    out = python(
        env, APPLY.format(base=str(TOY_BASE), ref=ref, wrong=str(other), right=str(public))
    )
    assert out["refused"] and "not by the given key" in out["refused"]
    assert out["kind"] == "adapter" and env["HF_HOME"] in out["source"]
    assert json.loads((release / PROVENANCE_FILE).read_text())["subject"]
    assert Path(out["source"]).name == "pytorch_lora_weights.safetensors"
