"""Signed releases: sign the toy release with keys made here, verify it, and see every kind of
tampering fail in one line; provenance, the card, a chain of two signers, apply and generate."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from locopack.cli import cli
from locopack.release.attest import sign_release
from locopack.release.audit import audit_folder
from locopack.release.history import entry_hash, read_history, write_history
from locopack.release.layout import (
    CARD_FILE,
    HISTORY_FILE,
    PROVENANCE_FILE,
    SIGNATURE_FILE,
    hashed_files,
    release_files,
)
from locopack.release.signing import (
    SignatureError,
    SigningKey,
    TrustedKeys,
    sign_folder,
    signing_config,
    verify_folder,
)

pytest.importorskip("model_signing")
TOY_BASE = Path(__file__).resolve().parents[1] / "recipes" / "toy" / "toy-world"


def _key_pair(folder: Path, name: str) -> tuple[Path, Path, str]:
    """(private key, public key, the fingerprint computed here) of a new EC P-256 key."""
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public.write_bytes(pem)
    return private, public, "sha256:" + hashlib.sha256(pem).hexdigest()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two publishers' keys, in a folder whose name must never reach a release."""
    folder = tmp_path_factory.mktemp("secret-keyring-of-alice")
    return [_key_pair(folder, name) for name in ("alice", "bob")]


@pytest.fixture(scope="module")
def signed(toy_release, keys, tmp_path_factory):
    """A copy of the toy release signed by alice through the CLI."""
    out = tmp_path_factory.mktemp("signed") / "release"
    shutil.copytree(toy_release, out)
    result = CliRunner().invoke(cli, ["sign", str(out), "--private-key", str(keys[0][0])])
    assert result.exit_code == 0, result.output
    assert keys[0][2] in result.output
    return out


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def _contents(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in release_files(folder)}


def _audit(folder: Path, *keys: Path) -> tuple[int, str]:
    args = ["audit", str(folder)] + [f"--public-key={k}" for k in keys]
    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.output


def test_a_signed_release_verifies_with_its_key_and_names_the_signer(signed, keys):
    code, output = _audit(signed, keys[0][1])
    assert code == 0, output
    assert f"ok    signature: signed by key {keys[0][2]}" in output
    assert f"ok    provenance: {PROVENANCE_FILE} matches the history" in output
    code, output = _audit(signed)  # no key: reported, not required
    assert code == 0 and "signed, not verified: no key given" in output and keys[0][2] in output
    # the signature covers exactly the release's files, the provenance and the card included
    bundle = json.loads((signed / SIGNATURE_FILE).read_text())
    payload = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    signed_names = {r["name"] for r in payload["predicate"]["resources"]}
    assert signed_names == set(release_files(signed)) - {SIGNATURE_FILE}
    assert {PROVENANCE_FILE, CARD_FILE, HISTORY_FILE} <= signed_names
    assert not any(name.startswith("cache") for name in signed_names)


def test_an_unsigned_release_says_so_and_fails_when_a_key_is_required(
    toy_release, signed, keys, tmp_path
):
    code, output = _audit(toy_release)
    assert code == 0 and "ok    signature: unsigned" in output
    code, output = _audit(toy_release, keys[0][1])
    assert code == 1 and f"{SIGNATURE_FILE}: missing" in output
    assert len(output.strip().splitlines()[-1]) > 0 and "Traceback" not in output
    stripped = _copy(signed, tmp_path)  # and no key given: the provenance left behind tells
    (stripped / SIGNATURE_FILE).unlink()
    code, output = _audit(stripped)
    assert code == 1 and f"{PROVENANCE_FILE}: present without {SIGNATURE_FILE}" in output


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_one_byte_changed_in_any_file_fails_naming_the_file(signed, keys, tmp_path):
    trusted = TrustedKeys(public_keys=(keys[0][1],))
    names = [n for n in release_files(signed) if n != SIGNATURE_FILE]
    assert len(names) > 10
    copy = _copy(signed, tmp_path)
    for name in names:
        original = (copy / name).read_bytes()
        _flip(copy / name)
        with pytest.raises(SignatureError) as caught:
            verify_folder(copy, trusted)
        assert f"{name}: changed since signing" in str(caught.value)
        assert "\n" not in str(caught.value)
        (copy / name).write_bytes(original)
    assert verify_folder(copy, trusted) == f"key {keys[0][2]}"


@pytest.mark.parametrize(
    "tamper, expected",
    [
        ("added", "extra.txt: added after signing"),
        ("removed", "edit.json: signed but missing"),
        ("other key", "not by the given key(s)"),
        ("stripped", f"{SIGNATURE_FILE}: missing"),
        ("provenance edited", f"{PROVENANCE_FILE}: changed since signing"),
        ("bundle edited", "the bundle was altered"),
    ],
)
def test_each_tampering_fails_the_audit_in_one_line(signed, keys, tmp_path, tamper, expected):
    copy = _copy(signed, tmp_path)
    key = keys[1][1] if tamper == "other key" else keys[0][1]
    if tamper == "added":
        (copy / "extra.txt").write_text("x")
    elif tamper == "removed":
        (copy / "edit.json").unlink()
    elif tamper == "stripped":
        (copy / SIGNATURE_FILE).unlink()
    elif tamper == "provenance edited":
        text = (copy / PROVENANCE_FILE).read_text()
        (copy / PROVENANCE_FILE).write_text(text.replace('"torch"', '"Torch"'))
    elif tamper == "bundle edited":
        bundle = json.loads((copy / SIGNATURE_FILE).read_text())
        signature = bundle["dsseEnvelope"]["signatures"][0]
        raw = bytearray(base64.b64decode(signature["sig"]))
        raw[-1] ^= 0x01  # one bit of the ECDSA signature
        signature["sig"] = base64.b64encode(bytes(raw)).decode()
        (copy / SIGNATURE_FILE).write_text(json.dumps(bundle))
    code, output = _audit(copy, key)
    last = output.strip().splitlines()[-1]
    assert code == 1 and last.startswith("error: audit failed:"), output
    assert expected in last and "Traceback" not in output


def test_provenance_re_signed_after_an_edit_fails_against_the_history(signed, keys, tmp_path):
    copy = _copy(signed, tmp_path)
    statement = json.loads((copy / PROVENANCE_FILE).read_text())
    recipe = statement["predicate"]["buildDefinition"]["externalParameters"]["recipe"]
    recipe["sha256"] = "0" * 64
    (copy / PROVENANCE_FILE).write_text(json.dumps(statement))
    sign_folder(copy, signing_config(SigningKey(keys[0][0])))  # the key holder lies
    report = audit_folder(copy, trusted=TrustedKeys(public_keys=(keys[0][1],)))
    checks = {c.name: c for c in report.checks}
    assert checks["signature"].ok and not checks["provenance"].ok
    assert (
        "externalParameters.recipe.sha256 differs from the history" in checks["provenance"].detail
    )


def test_the_provenance_names_what_the_history_records(signed):
    (entry,) = read_history(signed / HISTORY_FILE)
    statement = json.loads((signed / PROVENANCE_FILE).read_text())
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    expected = dict(hashed_files(signed))
    expected[HISTORY_FILE] = hashlib.sha256((signed / HISTORY_FILE).read_bytes()).hexdigest()
    assert subjects == expected
    build = statement["predicate"]["buildDefinition"]
    materials = {m["name"]: m for m in build["resolvedDependencies"]}
    assert materials["recipe"]["digest"]["sha256"] == entry.recipe_sha256
    assert materials["base_model"]["uri"] == entry.base_model == "./toy-world"
    assert materials["base_model"]["annotations"]["fingerprint"] == entry.base_fingerprint
    builder = statement["predicate"]["runDetails"]["builder"]
    assert builder["version"] == entry.versions and set(builder["version"]) >= {
        "locopack",
        "torch",
        "diffusers",
        "transformers",
    }
    assert build["internalParameters"]["device"] == "cpu" == entry.device


def test_the_card_names_the_signer_and_the_command_and_no_key_path(signed, keys):
    card = (signed / CARD_FILE).read_text()
    section = card[card.index("## Signature") :]
    assert keys[0][2] in section
    assert "locopack audit" in section and "--public-key" in section
    for name in release_files(signed):
        data = (signed / name).read_bytes()
        assert b"secret-keyring-of-alice" not in data and b"alice.pem" not in data, name
    assert audit_folder(signed).ok


def test_signing_twice_changes_only_the_signature(signed, keys, tmp_path):
    again = _copy(signed, tmp_path)
    sign_release(again, SigningKey(keys[0][0]))
    differ = [
        n for n in release_files(signed) if (signed / n).read_bytes() != (again / n).read_bytes()
    ]
    assert differ == [SIGNATURE_FILE]  # ECDSA draws a nonce: the one non-reproducible file
    assert verify_folder(again, TrustedKeys(public_keys=(keys[0][1],)))


def test_a_tampered_release_is_not_signed_and_nothing_is_written(toy_release, keys, tmp_path):
    copy = _copy(toy_release, tmp_path)
    _flip(copy / "edit.json")
    before = _contents(copy)
    result = CliRunner().invoke(cli, ["sign", str(copy), "--private-key", str(keys[0][0])])
    assert result.exit_code == 1 and "not signed, the release fails its audit" in result.output
    assert _contents(copy) == before


def test_keyless_signing_offline_is_one_line_and_leaves_the_release_unsigned(toy_release, tmp_path):
    copy = _copy(toy_release, tmp_path)
    before = _contents(copy)
    result = CliRunner().invoke(cli, ["sign", str(copy), "--sigstore"])
    assert result.exit_code == 1, result.output
    (line,) = [x for x in result.output.splitlines() if x.strip()]
    assert line.startswith("error: --sigstore: keyless signing needs the network")
    assert _contents(copy) == before


def _stack(first: Path, second: Path) -> None:
    """Make ``second`` (a copy of the toy release) a release built on ``first``'s merged
    checkpoint: its history continues first's chain and records first/merged as its base."""
    (first / "merged").mkdir()
    (first / "merged" / "model_index.json").write_text("{}")
    (entry,) = read_history(first / HISTORY_FILE)
    # first's stand-in merged/ holds no checkpoint: record no base folder to check it against
    # (the toy release's relative base_location reaches the toy model or not depending on
    # where the checkout and the temporary folders lie)
    entry = entry.model_copy(update={"files": hashed_files(first), "base_location": None})
    entry.hash = entry_hash(entry)
    write_history(first, [entry])
    (own,) = read_history(second / HISTORY_FILE)
    update = {"index": 1, "prev": entry.hash, "base_location": "../first/merged"}
    own = own.model_copy(update=update)
    own.hash = entry_hash(own)
    write_history(second, [entry, own])


def test_a_chain_of_two_releases_signed_by_two_keys_reports_both(toy_release, keys, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copytree(toy_release, first)
    shutil.copytree(toy_release, second)
    _stack(first, second)
    sign_release(first, SigningKey(keys[0][0]))
    sign_release(second, SigningKey(keys[1][0]))
    code, output = _audit(second, keys[0][1], keys[1][1])
    assert code == 0, output
    signers = next(line for line in output.splitlines() if "signers:" in line)
    assert f"#1 toy-erase-stripes: signed by key {keys[1][2]}" in signers
    assert f"#0 toy-erase-stripes: signed by key {keys[0][2]}" in signers
    statement = json.loads((second / PROVENANCE_FILE).read_text())
    earlier = statement["predicate"]["buildDefinition"]["resolvedDependencies"][-1]
    digest = hashlib.sha256((first / SIGNATURE_FILE).read_bytes()).hexdigest()
    assert earlier["annotations"]["signature_sha256"] == digest
    # the earlier release re-signed: no longer the signature this release's provenance named
    sign_release(first, SigningKey(keys[0][0]))
    code, output = _audit(second, keys[0][1], keys[1][1])
    assert code == 1 and f"its {SIGNATURE_FILE} is not the one recorded" in output


def test_apply_and_generate_refuse_a_release_that_does_not_verify(signed, keys, tmp_path):
    from locopack.hub.apply import apply
    from locopack.models import load_pipeline

    pipe, _ = load_pipeline(str(TOY_BASE))
    with pytest.raises(SignatureError, match="not by the given key"):
        apply(pipe, signed, public_key=keys[1][1])
    tampered = _copy(signed, tmp_path)
    _flip(tampered / "pytorch_lora_weights.safetensors")
    with pytest.raises(SignatureError) as caught:
        apply(pipe, tampered, public_key=keys[0][1])
    assert "pytorch_lora_weights.safetensors: changed since signing" in str(caught.value)
    applied = apply(pipe, signed, public_key=keys[0][1])
    assert applied.kind == "adapter" and applied.source.parent == signed
    applied.remove()
    out = tmp_path / "image.png"
    args = ["generate", "--model", str(TOY_BASE), "--adapter", str(signed), "--prompt", "x"]
    result = CliRunner().invoke(
        cli, [*args, "--steps", "1", "--out", str(out), "--public-key", str(keys[1][1])]
    )
    assert result.exit_code == 1 and not out.exists()
    (line,) = [x for x in result.output.splitlines() if x.strip()]
    assert line.startswith("error: ") and "not by the given key" in line


def _certificate(subject: str, key, issuer_name: str, issuer_key, ca: bool):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(issuer_key, hashes.SHA256())
    )


def test_certificate_mode_verifies_against_its_root_only(toy_release, tmp_path):
    pem = serialization.Encoding.PEM
    root_key, other_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _certificate("Publisher Root", root_key, "Publisher Root", root_key, True)
    other = _certificate("Other Root", other_key, "Other Root", other_key, True)
    leaf = _certificate("Publisher Release Signing", leaf_key, "Publisher Root", root_key, False)
    (tmp_path / "root.crt").write_bytes(root.public_bytes(pem))
    (tmp_path / "other.crt").write_bytes(other.public_bytes(pem))
    (tmp_path / "leaf.crt").write_bytes(leaf.public_bytes(pem))
    (tmp_path / "leaf.pem").write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    release = _copy(toy_release, tmp_path)
    args = ["sign", str(release), "--private-key", str(tmp_path / "leaf.pem")]
    args += ["--certificate", str(tmp_path / "leaf.crt")]
    args += ["--certificate-chain", str(tmp_path / "root.crt")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "certificate CN=Publisher Release Signing" in result.output
    card = (release / CARD_FILE).read_text()
    assert "CN=Publisher Release Signing" in card and "--certificate-chain" in card
    ok = CliRunner().invoke(
        cli, ["audit", str(release), "--certificate-chain", str(tmp_path / "root.crt")]
    )
    assert ok.exit_code == 0, ok.output
    assert "signed by certificate CN=Publisher Release Signing" in ok.output
    bad = CliRunner().invoke(
        cli, ["audit", str(release), "--certificate-chain", str(tmp_path / "other.crt")]
    )
    (line,) = [x for x in bad.output.splitlines() if x.startswith("error")]
    assert bad.exit_code == 1 and line.startswith("error: audit failed: signature: release.sig")
    assert "Traceback" not in bad.output


def test_a_recipe_base_must_verify_against_its_public_key(signed, keys, tmp_path):
    from locopack.errors import ModelLayoutError
    from locopack.pipeline.base import load_base
    from locopack.recipe import parse_recipe

    from .conftest import TOY_RECIPE

    def recipe_with(base: Path, key: Path):
        text = TOY_RECIPE.read_text().replace(
            "  model: ./toy-world\n", f"  model: {base}\n  public_key: {key}\n"
        )
        assert f"public_key: {key}" in text
        return parse_recipe(text, str(tmp_path / "recipe.yaml"))

    with pytest.raises(SignatureError) as caught:
        load_base(recipe_with(signed, keys[1][1]))
    assert "refused" in str(caught.value) and "not by the given key" in str(caught.value)
    with pytest.raises(ModelLayoutError, match="without a merged checkpoint"):
        load_base(recipe_with(signed, keys[0][1]))  # verified, then refused as adapter-only
    with pytest.raises(SignatureError, match="not a locopack release"):
        load_base(recipe_with(TOY_BASE, keys[0][1]))  # a plain pipeline carries no signature


def test_a_key_that_is_no_key_is_one_line_before_anything_is_written(toy_release, keys, tmp_path):
    (tmp_path / "not-a-key.pem").write_text("hello\n")
    copy = _copy(toy_release, tmp_path)
    before = _contents(copy)
    for args in (
        ["sign", str(copy), "--private-key", str(tmp_path / "not-a-key.pem")],
        ["push", str(copy), "--repo", "org/x", "--sign-key", str(tmp_path / "not-a-key.pem")],
        ["sign", str(copy), "--private-key", str(tmp_path / "missing.pem")],
        ["sign", str(copy), "--private-key", str(keys[0][0]), "--certificate", str(keys[0][1])],
    ):
        result = CliRunner().invoke(cli, args)
        lines = [x for x in result.output.splitlines() if x.strip()]
        assert result.exit_code in (1, 2) and len(lines) == 1, result.output
        assert any(f"--{o}" in lines[0] for o in ("private-key", "sign-key", "certificate"))
    assert _contents(copy) == before
