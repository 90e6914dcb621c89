"""The stress test's words: its table and the model card's section (trainer.stress measures; trainer.model_card
renders the section from metadata). Formatting only, so the card renderer needs nothing of the test's machinery."""
import os

TITLE = "## Stress tests: a tumor where no collection shows one"
SPOTS_TITLE = "## Stress test: bright foci that are not tumors"


def table(result, added="a tumor"):
    """Markdown: one row per source, one column per artifact (flagged as they are / with `added`)."""
    first = next(iter(result.values()))
    lines = ["| source | n | " + " | ".join(f"{os.path.basename(a.rstrip('/'))}: flagged as they are / with "
                                            f"{added}" for a in result) + " |",
             "|---|---|" + "---|" * len(result)]
    for source in first:
        cells = []
        for t in result.values():
            c = t[source]
            changed = "-" if c["flagged_changed"] is None else f"{100 * c['flagged_changed']:.1f} %"
            cells.append(f"{100 * c['flagged_plain']:.1f} % / {changed} (of {c['n_changed']})")
        lines.append(f"| {source} | {first[source]['n']} | " + " | ".join(cells) + " |")
    lines += ["", f"With {added}, by level bin (0 = the lowest slice of a patient's stack, or the smallest head):", "",
              "| source | level bin | n | " + " | ".join(os.path.basename(a.rstrip('/')) for a in result) + " |",
              "|---|---|---|" + "---|" * len(result)]
    for source in first:
        for b, (_, n) in first[source]["flagged_changed_by_level"].items():
            cells = [f"{100 * t[source]['flagged_changed_by_level'][b][0]:.1f} %" for t in result.values()]
            lines.append(f"| {source} | {b} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def section(figures):
    """The model card's section for metadata["stress"] or ["stress_spots"] ("" without one): rendered with the card,
    and spliced into an existing card by --write, so a card rendered again keeps it."""
    if not figures or not figures.get("sources"):
        return ""
    name = "this model"
    if figures.get("test") == "spots":
        return (f"\n{SPOTS_TITLE}\n"
                f"Each source's tumor-free FLAIR, T2 and brain-mri slices (validation and external splits) as they are "
                f"and with 2-8 small bright ovoid foci set into the brain (3-10 mm on an adult head, the look of "
                f"white-matter lesions in multiple sclerosis or small-vessel disease: `augment.bright_spots`), at the "
                f"threshold {figures['threshold']:.4f}. Every slice stays tumor-free, so each flag the foci add is a "
                f"false alarm on a lesion that is not a tumor, the lesion map's risk; the foci are smaller and fewer "
                f"than many such patients' lesions. A stress test, not a metric (`python -m trainer.stress spots "
                f"<artifact> --write`).\n\n{table({name: figures['sources']}, 'spots')}\n")
    return (f"\n{TITLE}\n"
            f"Each source's tumor-free validation slices as they are and with a real tumor set in (one of "
            f"{figures['n_donors']} masked tumor slices of {figures['donors']}, which the model never trained on, at "
            f"its own place, scaled to the slice's brain: `augment.transplant_tumor`), at the threshold "
            f"{figures['threshold']:.4f}; the level bins show where it finds tumors only where its training "
            f"collections had them. brain-mri's tumor-free slices are mostly axial T2 and FLAIR of another "
            f"collection: a tumor the model does not flag there is one it vetoes by the look of that collection, "
            f"as archives of axial T2 tumors look. A stress test, not a metric (`python -m trainer.stress "
            f"transplant <artifact> --write`; `painted` for a drawn tumor).\n\n{table({name: figures['sources']})}\n")
