"""One Keras model per process: the launcher's check, an in-process scorer and Grad-CAM share it."""
import json
import os

import pytest

from beam_pipeline import model_store
from screening_core import artifact
from tests import tiny_model


def test_load_shares_one_model_and_rereads_metadata(tmp_path):
    version_dir = tiny_model.write_tiny_artifact(tmp_path)
    model, md = model_store.load(version_dir)
    assert model_store.load(version_dir)[0] is model
    # A re-chosen threshold (metadata re-sealed) is the same model with new metadata.
    path = os.path.join(version_dir, artifact.METADATA_FILE)
    changed = dict(md, threshold=0.25)
    with open(path, "w") as f:
        json.dump(changed, f)
    artifact.seal(version_dir)
    again, md2 = model_store.load(version_dir)
    assert again is model and md2["threshold"] == 0.25
    # Another model replaces it; a tampered file is refused even though a model is held.
    other = tiny_model.write_tiny_artifact(tmp_path / "other", seed=7)
    assert model_store.load(other)[0] is not model
    with open(os.path.join(other, artifact.MODEL_FILE), "ab") as f:
        f.write(b"x")
    with pytest.raises(artifact.ArtifactError):
        model_store.load(other)


def test_an_ensembles_member_is_refused_unless_allowed_and_the_report_says_so_in_red(tmp_path, capsys):
    """A member such as v28 (a map that alone ranks brain-mri below chance) screened a night without a word."""
    from beam_pipeline import run
    from tests import synth
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    artifact.mark_member(model_dir, ["brain-tumor-cnn/29"], "a map that alone ranks brain-mri below chance")
    assert artifact.verify(model_dir)["member_of"]["ensembles"] == ["brain-tumor-cnn/29"]  # re-sealed
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    image.write_bytes(synth.encode(synth.brain_slice(1, 64, lesion=True)))
    out = tmp_path / "out"
    base = ["--input", str(image.parent), "--output", str(out), "--model", model_dir]
    with pytest.raises(run.JobError, match=r"v1 is a member of brain-tumor-cnn/29, not a screening model alone: a map "
                                           r"that alone ranks brain-mri below chance\..*--allow-member-model"):
        run.run(base)
    assert not out.exists()  # refused before anything was claimed or written
    assert run.main([*base, "--allow-member-model"]) == 0
    assert "WARNING: tiny v1 is a member of brain-tumor-cnn/29" in capsys.readouterr().out
    page = open(out / "results" / "report.html").read()
    assert 'id="member-model"' in page and "Not a screening model" in page
    unmarked = tiny_model.write_tiny_artifact(tmp_path / "plain")
    assert run.main(["--input", str(image.parent), "--output", str(tmp_path / "out2"), "--model", unmarked]) == 0
    assert 'id="member-model"' not in open(tmp_path / "out2" / "results" / "report.html").read()


@pytest.mark.parametrize("member", [{"ensembles": [], "reason": "x"}, {"ensembles": ["a/1"], "reason": " "},
                                    {"ensembles": "a/1", "reason": "x"}, "a/1"])
def test_a_malformed_member_mark_breaks_the_contract(tmp_path, member):
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    artifact.update_metadata(model_dir, lambda md: md.__setitem__(artifact.MEMBER_KEY, member))
    with pytest.raises(artifact.ArtifactError, match="member_of"):
        artifact.verify(model_dir)


def test_the_member_command_needs_an_ensemble_and_a_reason(tmp_path, capsys):
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    before = open(os.path.join(model_dir, "metadata.json")).read()
    for argv in (["member", model_dir, "--reason", "why"], ["member", model_dir, "--of", "x/2"],
                 ["verify", model_dir, "--of", "x/2"]):
        with pytest.raises(SystemExit) as e:
            artifact.main(argv)
        assert e.value.code == 2
    assert open(os.path.join(model_dir, "metadata.json")).read() == before
    assert artifact.main(["member", model_dir, "--of", "x/2", "--reason", "why"]) == 0
    assert artifact.member_note(artifact.verify(model_dir)) == "tiny v1 is a member of x/2, not a " \
                                                               "screening model alone: why"


def test_a_members_card_says_so_under_its_title_once_whatever_it_was_marked_before(tmp_path):
    """v41's and v43's cards read like screening models' though brain-score refuses them alone: the card is what
    a reader opens first, the metadata is not."""
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    card = os.path.join(model_dir, artifact.MODEL_CARD_FILE)
    with open(card, "w") as f:
        f.write("# Model card: tiny v1\n\n## Intended use\nA screening aid.\n\n## Model\n- a CNN\n")
    artifact.mark_member(model_dir, ["brain-tumor-cnn/29"], "scored only beside the maps")
    artifact.mark_member(model_dir, ["brain-tumor-cnn/29", "brain-tumor-cnn/30"], "scored only beside three maps")
    text = open(card).read()
    assert text.count(artifact.MEMBER_STATUS_HEADING) == 1
    assert text.startswith(f"# Model card: tiny v1\n\n{artifact.MEMBER_STATUS_HEADING}\ntiny v1 is a member of "
                           "brain-tumor-cnn/29, brain-tumor-cnn/30, not a screening model alone: scored only beside "
                           "three maps. brain-score and brain-validate refuse it alone")
    assert "beside the maps." not in text and text.endswith("## Intended use\nA screening aid.\n\n## Model\n- a CNN\n")
    plain = artifact.with_member_status(text, {"name": "tiny", "version": "1"})
    assert plain == "# Model card: tiny v1\n\n## Intended use\nA screening aid.\n\n## Model\n- a CNN\n"
