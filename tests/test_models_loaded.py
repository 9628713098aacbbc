"""The loaded base (models/loaded.py) and the kinds of text site (models/text_sites.py)."""

from __future__ import annotations

import pytest

from locopack.edit import activations, editor
from locopack.errors import ModelLayoutError
from locopack.fingerprint import model_fingerprint
from locopack.hooks import feed, joint
from locopack.models import FAMILIES, LoadedBase, load_base_model
from locopack.models.loaded import resolved_commit, snapshot_commit
from locopack.models.text_sites import CROSS_ATTENTION, JOINT_ATTENTION, TEXT_REFINER

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_the_loader_gives_the_pipeline_its_family_sites_and_fingerprint(twin_dirs):
    base = load_base_model(str(twin_dirs["sd1"]))
    assert base.family.name == "sd1" and base.source == str(twin_dirs["sd1"])
    assert base.commit is None and base.hub_id is None
    assert base.denoiser is base.pipe.unet
    paths = [site.path for site in base.family.sites(base.pipe.unet)]
    assert base.site_paths == paths and len(paths) > 1
    assert base.fingerprint == model_fingerprint(base.pipe, base.family)


def test_a_pipeline_in_memory_becomes_a_base_with_its_family_detected(twin_pipes):
    pipe, family = twin_pipes["pixart"]
    base = LoadedBase.of(pipe)
    assert base.family is family and base.denoiser is pipe.transformer
    assert base.source == "" and base.commit is None


def test_a_t5_length_for_a_family_without_one_is_one_clear_error(twin_dirs):
    with pytest.raises(ModelLayoutError, match="takes no T5 length"):
        load_base_model(str(twin_dirs["sd1"]), t5_length=64)


def test_the_commit_of_a_hub_cache_folder_is_read_from_its_path(tmp_path):
    folder = tmp_path / "models--org--name" / "snapshots" / COMMIT / "merged"
    folder.mkdir(parents=True)
    assert snapshot_commit(folder) == COMMIT
    other = tmp_path / "snapshots" / "main" / "merged"
    other.mkdir(parents=True)
    assert snapshot_commit(other) is None and snapshot_commit(tmp_path) is None
    assert resolved_commit("org/name", COMMIT) == COMMIT  # a commit names itself
    assert resolved_commit(str(tmp_path), "main") is None  # a folder has no Hub commit


def test_each_family_hands_out_the_kind_its_sites_are():
    kinds = {name: family.text_sites for name, family in FAMILIES.items()}
    assert {kinds[n] for n in ("sd1", "sd2", "sdxl", "if", "pixart", "sana")} == {CROSS_ATTENTION}
    assert {kinds[n] for n in ("sd3", "flux", "flux2", "chroma")} == {JOINT_ATTENTION}
    assert {kinds[n] for n in ("z-image", "lumina2")} == {TEXT_REFINER}
    # only joint attention has a pooled vector a window may swap alone; only cross-attention
    # sites all read one encoded text
    assert [k.name for k in (CROSS_ATTENTION, JOINT_ATTENTION, TEXT_REFINER) if k.swaps_pooled] == [
        "joint attention"
    ]
    assert [k.reads_encoded_text for k in (CROSS_ATTENTION, JOINT_ATTENTION, TEXT_REFINER)] == [
        True,
        False,
        False,
    ]


@pytest.mark.parametrize(
    "dispatcher",
    [joint._swap, editor._site_deltas, editor._site_errors, activations._activations],
    ids=["swap", "solve", "errors", "activations"],
)
def test_every_kind_of_text_site_has_its_work_registered(dispatcher):
    fallback = dispatcher.dispatch(object)
    for kind in (CROSS_ATTENTION, JOINT_ATTENTION, TEXT_REFINER):
        assert dispatcher.dispatch(type(kind)) is not fallback, kind.name


def test_text_is_given_to_cross_and_joint_sites_and_refused_for_a_refiner():
    fallback = feed._feed.dispatch(object)
    assert feed._feed.dispatch(type(CROSS_ATTENTION)) is not fallback
    assert feed._feed.dispatch(type(JOINT_ATTENTION)) is not fallback
    assert feed._feed.dispatch(type(TEXT_REFINER)) is fallback
    family = FAMILIES["z-image"]
    with pytest.raises(ModelLayoutError, match="text refiner"):
        family.given_text(None, ["a cat"])
