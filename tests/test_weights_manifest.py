"""weights_manifest.toml validation, name resolution, shipped files and local-path loading."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import fields

import pytest
import torch
from _weights_helpers import COMMIT, REPO, entry_for, tiny_checkpoint, write_manifest

from deblurcli import load_model
from deblurcli._toml import tomllib
from deblurcli.errors import (
    CheckpointError,
    ChecksumError,
    ManifestError,
    WeightsUnavailableError,
)
from deblurcli.weights import (
    default_model_name,
    get_pretrained,
    list_pretrained,
    load_manifest,
    pretrained_archs,
    resolve_weights,
    save_checkpoint,
    sha256_file,
)
from deblurcli.weights.manifest import (
    MANIFEST_PATH,
    entry_block,
    entry_table,
    format_manifest,
    parse_manifest,
    split_manifest_text,
)
from deblurcli.weights.manifest import write_manifest as write_manifest_file
from deblurcli.weights.resolve import parse_hf_uri

SHA = "ab" * 32


def _entry(**over):
    base = {"name": "simplecnn", "arch": "simplecnn", "file": "simplecnn.safetensors"}
    return {**base, "sha256": SHA, "size": 10, "license": "MIT", **over}


def test_bundled_manifest_is_valid(monkeypatch):
    monkeypatch.delenv("DEBLURCLI_MANIFEST", raising=False)
    manifest = load_manifest()
    assert manifest.path == MANIFEST_PATH
    for entry in manifest.entries:  # each one is shipped or pinned on the Hub
        assert entry.package_path.is_file() or entry.hub_url is not None


def test_empty_manifest_means_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DEBLURCLI_MANIFEST", str(write_manifest(tmp_path / "e.toml", [])))
    assert list_pretrained() == [] and pretrained_archs() == set()
    assert default_model_name() is None
    with pytest.raises(WeightsUnavailableError, match="no pretrained weights are available yet"):
        load_model()
    with pytest.raises(WeightsUnavailableError, match="pass model PATH"):
        load_model("deblurgan")


def test_documented_example_entry_is_a_valid_entry(tmp_path):
    """The commented example in weights_manifest.toml documents every key and parses."""
    text = MANIFEST_PATH.read_text()
    block = re.search(r"^# \[\[model\]\]\n((?:# .*\n)+)", text, re.M)
    assert block is not None
    lines = [line[2:].split("  #")[0] for line in block.group(1).splitlines()]
    toml = "\n".join(["schema_version = 1", "[[model]]", *lines])
    toml = toml.replace("<64 lowercase hex digits>", SHA).replace("<40-hex commit>", COMMIT)
    (tmp_path / "m.toml").write_text(toml)
    (entry,) = load_manifest(tmp_path / "m.toml").entries
    documented = set(re.findall(r"^(\w+) = ", toml, re.M))
    assert {f.name for f in fields(entry)} - {"package_dir"} <= documented
    assert entry.name == "deblurgan.gopro" and entry.hub_url.endswith(f"@{COMMIT}")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (_entry(colour="red"), "unknown key.*colour"),
        ({k: v for k, v in _entry().items() if k != "sha256"}, "missing required key 'sha256'"),
        (_entry(sha256="xyz"), "sha256 must be 64"),
        (_entry(arch="unet", name="unet"), "arch 'unet' is not in the registry"),
        (_entry(name="edgenet"), "name 'edgenet' must be 'simplecnn'"),
        (_entry(name="simplecnn.Bad Tag"), "must be 'simplecnn' or"),
        (_entry(file="../../etc/evil.safetensors"), "plain '\\*.safetensors' file name"),
        (_entry(file="sub/dir.safetensors"), "plain"),
        (_entry(file="..safetensors"), "plain"),
        (_entry(file=".hidden.safetensors"), "plain"),
        (_entry(file="model.pth"), "plain"),
        (_entry(size=0), "size must be a positive"),
        (_entry(size="10"), "'size' must be a int"),
        (_entry(hub_repo="owner/repo"), "hub_repo and revision go together"),
        (_entry(hub_repo="owner/repo", revision="main"), "40-hex commit"),
        (_entry(hub_repo="no-slash", revision=COMMIT), "owner/name"),
        (_entry(config={"width": 8}), "config: simplecnn: unknown config key"),
        (_entry(scores={"psnr": "high"}), "scores must map"),
    ],
)
def test_invalid_entries_are_one_line_manifest_errors(tmp_path, entry, message):
    path = write_manifest(tmp_path / "m.toml", [entry])
    with pytest.raises(ManifestError, match=message) as info:
        load_manifest(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(
    ("entries", "top", "message"),
    [
        ([_entry(), _entry()], {}, "duplicate model name"),
        (
            [_entry(name="simplecnn.a", default=True), _entry(name="simplecnn.b", default=True)],
            {},
            "more than one default",
        ),
        ([_entry(name="simplecnn.a"), _entry(name="simplecnn.b")], {}, "mark one 'default"),
        ([_entry()], {"default": "edgenet"}, "default 'edgenet' is not a model"),
        ([_entry()], {"schema_version": 2}, "schema_version must be 1"),
        ([_entry()], {"models": 1}, "unknown top-level key"),
    ],
)
def test_invalid_manifests(tmp_path, entries, top, message):
    path = write_manifest(tmp_path / "m.toml", entries, **top)
    with pytest.raises(ManifestError, match=message):
        load_manifest(path)


def test_broken_toml_and_missing_env_manifest(tmp_path, monkeypatch):
    (tmp_path / "bad.toml").write_text("schema_version = [")
    with pytest.raises(ManifestError, match="not valid TOML"):
        load_manifest(tmp_path / "bad.toml")
    monkeypatch.setenv("DEBLURCLI_MANIFEST", str(tmp_path / "nope.toml"))
    with pytest.raises(ManifestError, match="set by DEBLURCLI_MANIFEST"):
        list_pretrained()


def test_names_bare_arch_and_default(tmp_path, monkeypatch):
    entries = [
        _entry(name="simplecnn.celeba"),
        _entry(name="simplecnn.gopro", default=True),
        _entry(name="edgenet.gopro", arch="edgenet", file="edgenet.safetensors"),
    ]
    path = write_manifest(tmp_path / "m.toml", entries, default="edgenet")
    monkeypatch.setenv("DEBLURCLI_MANIFEST", str(path))
    assert get_pretrained("simplecnn").name == "simplecnn.gopro"
    assert get_pretrained("simplecnn.celeba").name == "simplecnn.celeba"
    assert get_pretrained("edgenet").name == "edgenet.gopro"  # the only tag of its arch
    assert default_model_name() == "edgenet.gopro"
    assert pretrained_archs() == {"simplecnn", "edgenet"}
    with pytest.raises(WeightsUnavailableError, match="known: simplecnn.celeba"):
        get_pretrained("deblurgan")
    # No top-level default: the first model.
    path = write_manifest(tmp_path / "m2.toml", entries)
    assert default_model_name(path) == "simplecnn.celeba"


@pytest.fixture
def shipped(tmp_path):
    """A manifest whose simplecnn checkpoint is shipped in pretrained/ beside it."""
    model, data = tiny_checkpoint(tmp_path / "pretrained" / "simplecnn-tiny.safetensors")
    entry = entry_for("simplecnn.tiny", data, "simplecnn-tiny.safetensors", shipped=True)
    return model, write_manifest(tmp_path / "m.toml", [entry]), tmp_path / "pretrained"


def test_shipped_fp16_file_loads_as_fp32_by_name(shipped):
    model, manifest, folder = shipped
    for value in ("simplecnn", "simplecnn.tiny", None):
        loaded = load_model(value, manifest=manifest)
        assert loaded.arch_name == "simplecnn" and not loaded.training
        assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=3e-3, rtol=3e-3)
    assert resolve_weights("simplecnn", manifest=manifest) == folder / "simplecnn-tiny.safetensors"


def test_tampered_shipped_file_is_a_checksum_error(shipped):
    _, manifest, folder = shipped
    path = folder / "simplecnn-tiny.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern changed
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="simplecnn-tiny.safetensors.*reinstall") as info:
        load_model("simplecnn", manifest=manifest)
    assert "simplecnn.tiny" in str(info.value)
    # verify=False skips the hash (the benchmark's baseline) and the file still loads.
    assert load_model("simplecnn", manifest=manifest, verify=False).arch_name == "simplecnn"


def test_truncated_checkpoint_with_matching_hash_is_a_clear_error(tmp_path):
    _, data = tiny_checkpoint(tmp_path / "pretrained" / "t.safetensors")
    cut = data[: len(data) // 2]
    (tmp_path / "pretrained" / "t.safetensors").write_bytes(cut)
    manifest = write_manifest(tmp_path / "m.toml", [entry_for("simplecnn", cut, "t.safetensors")])
    with pytest.raises(CheckpointError, match="t.safetensors: .*(corrupt|truncated|readable)"):
        load_model("simplecnn", manifest=manifest)


class _WritesAFile:
    """Unpickling this would create ``marker``: proof that pickled code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pth_with_code_running_pickle_is_refused_by_load_model(tmp_path):
    import pickle

    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"features.0.weight": _WritesAFile(marker)}, f)
    # A config.json beside it names the arch, so load_model really reads the .pth.
    (tmp_path / "config.json").write_text(json.dumps({"arch": "simplecnn"}))
    with pytest.raises(CheckpointError, match="refused"):
        load_model(tmp_path / "evil.pth")
    assert not marker.exists()


def test_checkpoint_without_metadata_uses_config_json_beside_it(tmp_path):
    from safetensors.torch import save_file

    from deblurcli.archs import create, get_spec

    cfg = get_spec("simplecnn").tiny_config
    model = create("simplecnn", **cfg)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors"
    )
    with pytest.raises(CheckpointError, match="no 'deblurcli.arch'"):
        load_model(tmp_path / "w.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"arch": "simplecnn", "config": cfg}))
    assert load_model(tmp_path / "w.safetensors").arch_config == model.arch_config


def test_local_paths_win_and_unknown_values_are_clear(tmp_path, shipped):
    _, manifest, _ = shipped
    mine = create_and_save(tmp_path / "run")
    assert load_model(tmp_path / "run", manifest=manifest).arch_name == "transformnet"
    assert load_model(str(mine), manifest=manifest).arch_name == "transformnet"
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_model(tmp_path / "missing.safetensors", manifest=manifest)
    with pytest.raises(WeightsUnavailableError, match="not a pretrained model; known: simplecnn"):
        load_model("simplecnn.nope", manifest=manifest)


def create_and_save(folder):
    from deblurcli.archs import create, get_spec

    model = create("transformnet", **get_spec("transformnet").tiny_config)
    return save_checkpoint(model, folder / "model.safetensors")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("hf://a/b", ("a/b", "model.safetensors", "main")),
        (f"hf://a/b@{COMMIT}", ("a/b", "model.safetensors", COMMIT)),
        ("hf://a/b/sub/w.safetensors@v1.0", ("a/b", "sub/w.safetensors", "v1.0")),
        (f"hf://{REPO}/x.safetensors", (REPO, "x.safetensors", "main")),
    ],
)
def test_parse_hf_uri(uri, expected):
    ref = parse_hf_uri(uri)
    assert (ref.repo_id, ref.filename, ref.revision) == expected


@pytest.mark.parametrize("uri", ["hf://", "hf://onlyowner", "hf://a/b/../x", "hf://a/b/./x@r"])
def test_bad_hf_uris_are_refused(uri):
    with pytest.raises(CheckpointError, match="expected hf://owner/repo"):
        parse_hf_uri(uri)


def test_sha256_matches_hashlib(tmp_path):
    data = bytes(range(256)) * 9000  # spans several 1 MiB read chunks
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_checkpoint_must_match_the_entry_arch_and_config(tmp_path):
    _, data = tiny_checkpoint(tmp_path / "pretrained" / "w.safetensors")
    wrong_arch = entry_for("edgenet", data, "w.safetensors")
    with pytest.raises(CheckpointError, match="holds a simplecnn model but .* a edgenet"):
        load_model("edgenet", manifest=write_manifest(tmp_path / "a.toml", [wrong_arch]))
    from deblurcli.archs import get_spec

    key = next(iter(get_spec("simplecnn").tiny_config))
    wrong_cfg = entry_for("simplecnn", data, "w.safetensors", config={key: 3})
    with pytest.raises(CheckpointError, match=f"config differs .*{key}"):
        load_model("simplecnn", manifest=write_manifest(tmp_path / "b.toml", [wrong_cfg]))


# ---------------------------------------------------------------- writing


def _shipped_tables() -> tuple[str, list[str], dict]:
    text = MANIFEST_PATH.read_text(encoding="utf-8")
    head, blocks = split_manifest_text(text)
    return head, blocks, tomllib.loads(text)


def test_writing_the_shipped_manifest_reproduces_it():
    head, blocks, data = _shipped_tables()
    assert len(blocks) == len(data["model"]) > 0
    for block, table in zip(blocks, data["model"], strict=True):
        assert entry_block(table).rstrip("\n") == block.rstrip("\n")
    text = format_manifest(head, [entry_block(t) for t in data["model"]], data["default"])
    assert text == MANIFEST_PATH.read_text(encoding="utf-8")


def test_parsed_entries_write_back_to_equal_entries():
    head, _, data = _shipped_tables()
    parsed = parse_manifest(data, MANIFEST_PATH)
    blocks = [entry_block(entry_table(e)) for e in parsed.entries]
    again = parse_manifest(
        tomllib.loads(format_manifest(head, blocks, parsed.default)), MANIFEST_PATH
    )
    assert again == parsed
    # Every kind of key, zero and false values included, survives the trip too.
    odd = _entry(
        name="simplecnn.x", default=True, config={"widths": [8] * 6}, hub_repo=REPO,
        revision=COMMIT, cpu_bf16=False, cpu_bf16_psnr_delta=0.0, scores={"psnr": 0.0},
        description='quotes " and ×',
    )  # fmt: skip
    one = parse_manifest(tomllib.loads("schema_version = 1\n" + entry_block(odd)), MANIFEST_PATH)
    text = "schema_version = 1\n" + entry_block(entry_table(one.entries[0]))
    assert parse_manifest(tomllib.loads(text), MANIFEST_PATH) == one
    assert one.entries[0].cpu_bf16_psnr_delta == 0.0 and one.entries[0].cpu_bf16 is False


def _written_entry(name: str, sha: str = "0" * 64) -> dict:
    return {
        "name": name,
        "arch": name,
        "file": f"{name}.safetensors",
        "sha256": sha,
        "size": 10,
        "license": "GPL-2+",
        "config": {"width": 8} if name == "skipae" else {"widths": [8] * 6},
        "recipe": "deblur train --config 'widths=[8]' \"quoted\" ×",
        "scores": {"psnr": 30.5},
    }


def _empty_manifest(path):
    """The bundled manifest's comments and schema, without its models."""
    head, _, _ = _shipped_tables()
    path.write_text(format_manifest(head, [], None), encoding="utf-8")
    return path


def test_write_manifest_adds_replaces_and_keeps_comments(tmp_path):
    manifest = _empty_manifest(tmp_path / "weights_manifest.toml")
    write_manifest_file(
        manifest, [_written_entry("simplecnn"), _written_entry("skipae")], "simplecnn"
    )
    written = write_manifest_file(manifest, [_written_entry("skipae", "a" * 64)], "simplecnn")
    loaded = load_manifest(manifest)
    assert loaded.names() == ["simplecnn", "skipae"] == written.names()
    assert loaded.default == "simplecnn"
    skipae = loaded.entries[1]
    assert skipae.sha256 == "a" * 64 and skipae.recipe == _written_entry("x")["recipe"]
    assert "# Example entry documenting every key" in manifest.read_text(encoding="utf-8")
    write_manifest_file(manifest, [], None)  # no default: the line goes
    assert load_manifest(manifest).default is None


def test_write_manifest_through_a_link_keeps_the_link(tmp_path):
    # deblurcli/weights_manifest.toml is a link to the repository's top-level manifest.
    target = _empty_manifest(tmp_path / "weights_manifest.toml")
    (tmp_path / "pkg").mkdir()
    link = tmp_path / "pkg" / "weights_manifest.toml"
    link.symlink_to("../weights_manifest.toml")
    write_manifest_file(link, [_written_entry("simplecnn")], "simplecnn")
    assert link.is_symlink() and load_manifest(target).names() == ["simplecnn"]


def test_write_manifest_never_writes_an_invalid_manifest(tmp_path):
    manifest = tmp_path / "weights_manifest.toml"
    manifest.write_text(MANIFEST_PATH.read_text(encoding="utf-8"), encoding="utf-8")
    before = manifest.read_bytes()
    with pytest.raises(ManifestError):
        write_manifest_file(manifest, [{**_written_entry("simplecnn"), "sha256": "nothex"}], None)
    assert manifest.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [manifest.name]  # no temporary left
