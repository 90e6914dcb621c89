"""Stress tests put a tumor into tumor-free slices and score them beside the plain ones (trainer/stress.py)."""
import csv
import glob
import os

import numpy as np

from tests import synth, tiny_model
from trainer import augment, stress


def _scored_rows(root):
    """An LGG-like collection at the painter's scale and the scored rows an artifact keeps of it: its
    tumor-free slices as validation, its masked tumor slices as the held-out site (the donors), plus rows
    a stress test must not use (a tumor slice of validation, a training slice, a file that is gone)."""
    synth.write_sequence_collection(str(root / "lgg"), patients=4, per_patient=4, size=128,
                                    sequences=("flair", "t1-post"))
    rows = []
    for path in sorted(glob.glob(str(root / "lgg" / "*" / "*" / "*.png"))):
        seq, cls = path.split(os.sep)[-3:-1]
        tumor = cls == "tumor"
        rows.append({"path": path, "class_name": cls, "label": int(tumor), "group": 0, "score": 0.0,
                     "split": "held_out_site" if tumor else "validation", "source": f"lgg/{seq}", "level": 0.5})
    tumor_row = next(r for r in rows if r["label"] == 1)
    rows += [{**tumor_row, "split": "validation"}, {**rows[0], "split": "train"},
             {**rows[0], "path": str(root / "gone.png")}]
    return rows


def _artifacts(tmp_path, rows):
    everywhere = tiny_model.write_tiny_artifact(tmp_path / "a", size=128, lesion_bias=5.0)
    nowhere = tiny_model.write_tiny_artifact(tmp_path / "b", size=128, lesion_bias=-5.0)
    with open(os.path.join(everywhere, "validation_predictions.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return everywhere, nowhere


def test_the_same_tumor_free_slices_are_scored_as_they_are_and_with_a_tumor_put_in(tmp_path):
    """A map that says 'lesion' everywhere flags both, one that says it nowhere neither; only the first
    artifact's tumor-free rows of the split that still exist are used, the same ones for every artifact."""
    everywhere, nowhere = _artifacts(tmp_path, _scored_rows(tmp_path))
    for make in (stress.painter(7), stress.transplanter(stress.donors_of(everywhere), 7)):
        result = stress.stress([everywhere, nowhere], make)
        assert set(result[everywhere]) == {"lgg/flair", "lgg/t1-post"}
        for source in ("lgg/flair", "lgg/t1-post"):
            a, b = result[everywhere][source], result[nowhere][source]
            assert a["n"] == b["n"] == 8 and a["n_changed"] == b["n_changed"] >= 4
            assert a["flagged_plain"] == a["flagged_changed"] == 1.0
            assert b["flagged_plain"] == b["flagged_changed"] == 0.0
    assert "| lgg/flair | 8 | 100.0 % / 100.0 % (of" in stress.table(result)
    by_level = result[everywhere]["lgg/flair"]["flagged_changed_by_level"]
    assert list(by_level) == ["0.4-0.6"] and by_level["0.4-0.6"] == [1.0, result[everywhere]["lgg/flair"]["n_changed"]]
    assert "| lgg/flair | 0.4-0.6 |" in stress.table(result)


def test_a_transplanted_tumor_is_the_donors_own_cut_into_the_targets_brain_at_the_donors_place(tmp_path):
    everywhere, _ = _artifacts(tmp_path, _scored_rows(tmp_path))
    donors = stress.donors_of(everywhere)
    assert len(donors) == 8 and all(m.sum() >= 20 for _, m in donors)  # the masked tumor slices
    donor_x, donor_m = donors[0]
    make = stress.transplanter([donors[0]], seed=1)
    target = np.asarray(synth.brain_slice(3, 128), np.float32) / 255.0
    out, ok = make(target, 0, "lgg/flair")
    assert ok
    changed = np.abs(out - target) > 1e-6
    grown = np.pad(donor_m, 3)
    grown = np.lib.stride_tricks.sliding_window_view(grown, (7, 7)).any(axis=(2, 3))
    assert changed[donor_m].mean() > 0.9 and not changed[~grown].any()
    # brighter than the target's head where the donor's tumor was brighter than the donor's brain
    assert out[donor_m].mean() > np.median(target[target > 0.1])
    # a target without room for the tumor (no brain) is left out, never painted over the background
    assert make(np.zeros((128, 128), np.float32), 0, "lgg/flair")[1] is False


def test_the_painter_follows_the_sequence_folder():
    assert augment.kind_of_sequence("t1ce") == augment.SYNTH_KINDS["enhancing"]
    assert augment.kind_of_sequence("flair") == augment.kind_of_sequence("t2") == augment.SYNTH_KINDS["bright"]
    assert augment.kind_of_sequence("") == augment.kind_of_sequence("odd") == augment.SYNTH_KINDS["bright-or-enhancing"]
    # a folder naming its plane too keeps its look: no FLAIR tumor is set into a T1 slice as "unknown"
    assert augment.kind_of_sequence("t1-sagittal") == augment.kind_of_sequence("t1-pre") == augment.SYNTH_KINDS["dark"]
    assert augment.kind_of_sequence("flair-coronal") == augment.SYNTH_KINDS["bright"]
    assert augment.kind_of_sequence(None) == augment.kind_of_sequence("pd") == augment.SYNTH_KINDS["bright-or-enhancing"]


def test_spots_are_small_bright_foci_inside_the_brain_of_bright_looks_only_and_the_slice_stays_tumor_free(
        tmp_path, capsys):
    """Issue 24: bright lesions that are not tumors are the lesion map's risk; `spots` measures it."""
    make = stress.spotter(seed=3)
    target = np.asarray(synth.brain_slice(3, 128), np.float32) / 255.0
    out, ok = make(target, 0, "lgg/flair")
    assert ok and out.shape == target.shape
    changed = np.abs(out - target) > 0.02
    assert 0 < changed.sum() < 0.05 * target.size  # a few small foci, not a mass
    assert (out >= target - 1e-6).all() and not changed[target < 0.05].any()  # brighter, and only inside the head
    assert make(target, 0, "brain-mri")[1]  # its look unnamed: may be FLAIR or T2
    assert make(target, 0, "lgg/t1-post") == (target, False)  # T1: such lesions are not bright there
    again, _ = make(target, 0, "lgg/flair")
    np.testing.assert_array_equal(again, out)  # the same slice gets the same spots for every artifact
    everywhere, nowhere = _artifacts(tmp_path, _scored_rows(tmp_path))
    assert stress.main(["spots", everywhere, nowhere]) == 0
    text = capsys.readouterr().out
    assert "flagged as they are / with spots" in text and "| lgg/t1-post | 8 | 100.0 % / - (of 0) |" in text
    assert "| lgg/flair | 8 | 100.0 % / 100.0 % (of 8) | 0.0 % / 0.0 % (of 8) |" in text


def test_the_command_refuses_donors_it_cannot_find(tmp_path, capsys):
    import pytest
    everywhere, _ = _artifacts(tmp_path, _scored_rows(tmp_path))
    for bad in ("held_out_site", "train:lgg/flair"):
        with pytest.raises(SystemExit) as e:
            stress.main(["transplant", everywhere, "--donors", bad])
        assert e.value.code == 2
    assert "no masked tumor slices of train:lgg/flair" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        stress.main(["transplant", everywhere, "--max-per-sourc", "3"])  # a misspelt flag is no abbreviation
    assert e.value.code == 2


def test_a_lesion_artifacts_card_carries_the_transplant_table_where_its_rows_hold_donors(tmp_path):
    rows = _scored_rows(tmp_path)
    everywhere, _ = _artifacts(tmp_path, rows)
    section = stress.section(stress.measure(everywhere))
    assert section.startswith("\n## Stress tests") and "one of 8 masked tumor slices" in section
    assert "| lgg/flair | 8 | 100.0 % / 100.0 % (of" in section
    no_donors = [r for r in rows if r["split"] != "held_out_site"]
    quiet, _ = _artifacts(tmp_path / "q", no_donors)
    assert stress.measure(quiet) is None and stress.section(None) == ""


def test_write_stores_the_figures_and_a_card_rendered_again_keeps_them(tmp_path):
    """--write: metadata["stress"] at the artifact's threshold (re-sealed), the card's section spliced in place
    (a hand-written section above it survives), the same section in a card rendered from the metadata, and the
    contract refuses the figures once the threshold moves."""
    import pytest

    from screening_core import artifact
    from trainer import model_card
    everywhere, _ = _artifacts(tmp_path, _scored_rows(tmp_path))
    card = os.path.join(everywhere, artifact.MODEL_CARD_FILE)
    with open(card, "w") as f:
        f.write("# Model card\n\n## Status: a hand-written note\nkept\n")
    assert stress.main(["transplant", everywhere, "--write"]) == 0
    md = artifact.read_metadata(everywhere)
    figures = md["stress"]
    assert figures["threshold"] == md["threshold"] and figures["n_donors"] == 8
    assert figures["sources"]["lgg/flair"]["flagged_changed"] == 1.0
    text = open(card).read()
    assert "## Status: a hand-written note\nkept\n" in text and text.count(stress.TITLE) == 1
    assert "| lgg/flair | 8 | 100.0 % / 100.0 % (of" in text
    assert stress.main(["transplant", everywhere, "--write"]) == 0  # again: replaced, not appended
    assert open(card).read().count(stress.TITLE) == 1
    assert stress.section(figures).strip() in model_card._stress_section(md)
    artifact.verify(everywhere)  # re-sealed: the sums and the contract hold
    md["threshold"] = 0.3
    assert any("stress test figures were measured at threshold" in p and "trainer.stress transplant <artifact> --write"
               in p for p in artifact.contract_problems(md))
    with pytest.raises(SystemExit) as e:
        stress.main(["painted", everywhere, "--write"])
    assert e.value.code == 2


def test_write_stores_the_spots_figures_beside_the_transplant_ones_and_the_report_quotes_them(tmp_path):
    """spots --write: metadata["stress_spots"] over the validation and external bright-look slices, its own card
    section beside the transplant one, bound to the threshold, and a sentence in the run report's banner."""
    import pytest

    from beam_pipeline import report
    from screening_core import artifact
    from trainer import model_card
    rows = _scored_rows(tmp_path)
    rows += [{**r, "split": "external", "source": "heads/flair"} for r in rows if r["source"] == "lgg/flair"
             and r["split"] == "validation" and r["label"] == 0 and os.path.exists(r["path"])]
    everywhere, _ = _artifacts(tmp_path, rows)
    card = os.path.join(everywhere, artifact.MODEL_CARD_FILE)
    with open(card, "w") as f:
        f.write("# Model card\n")
    assert stress.main(["transplant", everywhere, "--write"]) == 0
    assert stress.main(["spots", everywhere, "--write"]) == 0
    assert stress.main(["spots", everywhere, "--write"]) == 0  # again: replaced, not appended
    md = artifact.verify(everywhere)
    spots = md["stress_spots"]
    assert spots["test"] == "spots" and spots["threshold"] == md["threshold"]
    assert set(spots["sources"]) == {"validation:lgg/flair", "external:heads/flair"}  # T1: no foci, left out
    assert spots["sources"]["validation:lgg/flair"]["n_changed"] == 8
    text = open(card).read()
    assert text.count(stress.SPOTS_TITLE) == 1 and text.count(stress.TITLE) == 1
    assert "| validation:lgg/flair | 8 | 100.0 % / 100.0 % (of 8) |" in text
    both = model_card._stress_section(md)
    assert stress.TITLE in both and stress.SPOTS_TITLE in both
    banner = report._stress_html(md)
    assert "foci like white-matter lesions" not in banner  # flagged as they were: the foci added nothing
    md["stress_spots"]["sources"]["external:heads/flair"].update(flagged_plain=0.125, flagged_changed=0.25)
    banner = report._stress_html(md)
    assert "flagged more of them: <b>heads/flair 12% &rarr; 25%</b>;" in banner and "lgg/flair 100% &rarr;" not in banner
    assert "can go unflagged" in banner
    assert report._spots_html({"stress": md["stress"]}) == ""
    md["threshold"] = 0.3
    assert any("bright-foci stress test figures were measured at threshold" in p
               for p in artifact.contract_problems(md))
    for bad in (["spots", everywhere, "--write", "--split", "external"], ["spots", everywhere, "--write",
                                                                          "--max-per-source", "2"]):
        with pytest.raises(SystemExit) as e:
            stress.main(bad)
        assert e.value.code == 2


def test_a_section_is_spliced_between_its_neighbours():
    card = "# c\n\n## A\na\n\n## Stress tests: a tumor where no collection shows one\nold\n\n## B\nb\n"
    out = stress.splice(card, "\n## Stress tests: a tumor where no collection shows one\nnew\n")
    assert out == "# c\n\n## A\na\n\n## Stress tests: a tumor where no collection shows one\nnew\n\n## B\nb\n"
    assert stress.splice("# c\n", "\n## Stress tests: x\n").endswith("# c\n\n## Stress tests: x\n")
    spots = "\n## Stress test: bright foci that are not tumors\nfoci\n"
    out = stress.splice(out, spots, stress.SPOTS_TITLE, after=stress.TITLE)
    assert out.endswith("## Stress tests: a tumor where no collection shows one\nnew\n\n## Stress test: bright foci that "
                        "are not tumors\nfoci\n\n## B\nb\n")
    assert stress.splice(out, spots.replace("foci\n", "again\n"), stress.SPOTS_TITLE, after=stress.TITLE).count("## Stress") == 2


def test_the_run_report_quotes_the_stored_stress_figures_in_its_validation_banner():
    from beam_pipeline import report
    md = {"stress": {"sources": {"brain-mri": {"flagged_changed": 0.294}, "lgg/flair": {"flagged_changed": 0.31},
                                 "empty": {"flagged_changed": None}}}}
    text = report._stress_html(md)
    assert "<b>brain-mri 29%, lgg/flair 31%</b>" in text and "empty" not in text and "can go unflagged" in text
    assert report._stress_html({}) == "" and report._stress_html(None) == ""


def test_write_measures_each_artifact_on_its_own_slices(tmp_path):
    """With two artifacts the printed table scores the first one's slices with both; what --write stores for the
    second is measured on the second's own scored rows."""
    from screening_core import artifact
    everywhere, _ = _artifacts(tmp_path / "one", _scored_rows(tmp_path / "one"))
    rows = [r for r in _scored_rows(tmp_path / "two") if r["source"] == "lgg/flair" or r["split"] == "held_out_site"]
    other, _ = _artifacts(tmp_path / "two", rows)
    assert stress.main(["transplant", everywhere, other, "--write"]) == 0
    assert set(artifact.read_metadata(everywhere)["stress"]["sources"]) == {"lgg/flair", "lgg/t1-post"}
    assert set(artifact.read_metadata(other)["stress"]["sources"]) == {"lgg/flair"}
