# The two commands a new user needs: `make demo` and `make test`.
# Both create (or reuse) .venv and install the pinned dependencies first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared/data
DATA ?= $(SHARED)/brain-mri $(SHARED)/lgg
EVAL_DATA ?= $(SHARED)/brats-sample
MODEL_DIR ?= models
EPOCHS ?= 20
SEED ?= 42
# prepare()'s version each recipe was built on (screening_core/preprocessing.py keeps every one): v1 up to v35,
# v2 for v36, v3 from v37 on; a train-vN target rebuilds its model on its own. `brain-train` alone takes the newest.
PREP = gray-headcrop-pnorm-v1
PREPARE = --preprocessing $(PREP)
# Patient key: everything before the slice number of LGG (TCGA_<site>_<patient>_<date>) and BraTS files.
GROUP_PATTERN ?= ^((?:TCGA_|.*brats).+)_\d+\.\w+$$
# The LGG institution FG (14 patients) is held out entirely: the stand-in for a new hospital.
HOLDOUT ?= ^TCGA_FG_
# LGG's T1 "tumor" labels are noisy (many slices show no lesion): the threshold is chosen on the rest.
THRESHOLD_SOURCES ?= ^(brain-mri|lgg/flair)$$
CHECK_DIR ?= /tmp/brain-screening-checks
STAMP := $(VENV)/.installed

.PHONY: venv browser test demo data-mni152 data-healthy-heads data-healthy-planes data-tumor-free-probe data-brats-toolkit data-lgg-t2syn probe-tumor-free train train-v3 train-v7 train-v8 train-v9 train-v10 train-v11 train-v12 train-v13 train-v14 train-v15 train-v16 train-v17 train-v18 train-v19 train-v20 train-v21 train-v22 train-v23 train-v24 train-v25 train-v26 train-v27 train-v28 train-v29 train-v30 train-v31 train-v32 checks checks-v3 bench clean constraints

CONSTRAINTS := requirements/constraints.txt

# Installs the exact versions CI ran (requirements/constraints.txt); pyproject.toml keeps the ranges.
$(STAMP): pyproject.toml setup.py $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# All CPU benchmarks (about an hour on 2 cores), with the encoders bench/dicom_job.py needs.
bench: $(STAMP)
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[bench]'
	bash bench/run_all.sh

# Debian packages the tests use: chromium renders the HTML report in the browser test; orthanc and
# orthanc-dicomweb are the PACS the DICOMweb tests search; openssl makes the TLS test's certificate;
# dicom3tools' dciodvfy checks the SR and overlays write-back stores (needs root or sudo once). If they cannot be
# installed those tests are skipped with a reason, and this says so loudly.
browser:
	@missing=""; command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	  [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing="$$missing orthanc orthanc-dicomweb"; \
	  command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	  command -v dciodvfy >/dev/null 2>&1 || missing="$$missing dicom3tools"; \
	  [ -z "$$missing" ] || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  ($$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null) \
	  || echo "WARNING: could not install$$missing; the browser and DICOMweb tests will be skipped"; }

# Tests run in parallel processes (pytest-xdist), a test module's tests together so module fixtures
# (a PACS, a pipeline run) start once; tests/conftest.py shares the vCPUs out among the processes' thread
# pools and starts the longest modules first. One worker more than vCPUs: many tests wait on a server, a
# deadline or a subprocess (2 vCPUs, same clone, same hour: 275 s of pytest with 2 workers, 233 s with 3).
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
test: $(STAMP) browser
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -q -n $(TEST_WORKERS) --maxprocesses 4 --dist loadscope tests

# After a change to the dependencies in pyproject.toml: resolve the ranges afresh in a scratch
# environment and record the exact versions (review the diff, then commit it).
constraints:
	rm -rf /tmp/brain-screening-constraints && $(PYTHON) -m venv /tmp/brain-screening-constraints
	/tmp/brain-screening-constraints/bin/pip install --quiet --upgrade pip
	/tmp/brain-screening-constraints/bin/pip install --quiet '.[test]'
	{ sed -n '1,3p' $(CONSTRAINTS); /tmp/brain-screening-constraints/bin/pip freeze --exclude-editable \
	  | grep -v '^brain-mri-screening'; } > $(CONSTRAINTS).new && mv $(CONSTRAINTS).new $(CONSTRAINTS)

demo: $(STAMP)
	$(PY) -m beam_pipeline.demo

# Reproduces model v4, the lesion-first U-Net (seeded; ~45 min of fit on 2 CPU cores, see its card): trained
# on the collections with tumor masks only (LGG, BraTS-PEDs), LGG institution FG held out, brain-mri and
# brats-sample scored as collections it never saw. make train TRAIN_ARGS="--version 4"
LESION_DATA ?= $(SHARED)/lgg $(SHARED)/brats-ped
LESION_EVAL ?= $(SHARED)/brain-mri $(SHARED)/brats-sample
LESION_EPOCHS ?= 8
train: $(STAMP)
	$(PY) -m trainer.lesion_train $(PREPARE) $(foreach d,$(LESION_DATA),--data-dir $(d)) \
		$(foreach d,$(LESION_EVAL),--eval-data-dir $(d)) --holdout-pattern '$(HOLDOUT)' \
		--threshold-sources '^lgg/flair$$' --shares lgg=0.7,brats-ped=0.3 --select-on all \
		--model-dir $(MODEL_DIR) --epochs $(LESION_EPOCHS) --steps-per-epoch 250 --seed $(SEED) $(TRAIN_ARGS)
	@echo "then: python -m trainer.ood build <artifact>; python -m trainer.export <artifact>"

# Reproduces v6 and v7 (v4 fine-tuned with brain-mri tumor masks; seeded; ~35 min of fit on 2 CPU cores) into
# MODEL_DIR (another folder than models/, which holds them):
# the masks come from the figshare collection's borders (trainer/figshare_masks.py says where to get the two
# public inputs). make train-v7 FIGSHARE_IMAGES=<RCS-YOLO>/dataset-brain-tumor/categorized \
#   FIGSHARE_BORDERS=<brainscan_AI>/data/tumor_metadata.csv
FIGSHARE_MASKS ?= ../data/brain-mri-masks
V7_ARGS = --data-dir $(SHARED)/lgg --data-dir $(SHARED)/brats-ped --data-dir $(SHARED)/brain-mri \
	--eval-data-dir $(SHARED)/brats-sample --holdout-pattern '$(HOLDOUT)' --masks-dir brain-mri=$(FIGSHARE_MASKS) \
	--label-only-tumors skip --shares lgg=0.5,brats-ped=0.25,brain-mri=0.25 --steps-per-epoch 250 --seed $(SEED) \
	--model-dir $(MODEL_DIR)
# Tumor-free T1/T2/FLAIR slices at every level from the MNI152 template nilearn's wheel ships
# (trainer/template_slices.py; the wheel is fetched from PyPI, not installed, and its three template files are
# kept in MNI152_TEMPLATE for the healthy-brain probe: python -m trainer.template_slices --template-dir
# ../data/mni152-template --step 3 --probe <artifact>): make data-mni152
MNI152 ?= ../data/mni152
MNI152_TEMPLATE ?= ../data/mni152-template
NILEARN_WHEEL ?= nilearn==0.14.1
data-mni152: $(STAMP)
	test -d $(MNI152_TEMPLATE) || { tmp=$$(mktemp -d); $(PY) -m pip download --quiet --no-deps '$(NILEARN_WHEEL)' -d $$tmp && \
		$(PY) -m zipfile -e $$tmp/nilearn-*.whl $$tmp/wheel && mkdir $$tmp/template && \
		cp $$tmp/wheel/nilearn/datasets/data/mni_icbm152_*_tal_nlin_sym_09a_converted.nii.gz $$tmp/template/ && \
		mkdir -p $(dir $(MNI152_TEMPLATE)) && mv $$tmp/template $(MNI152_TEMPLATE); s=$$?; rm -rf $$tmp; exit $$s; }
	test -d $(MNI152) || $(PY) -m trainer.template_slices --template-dir $(MNI152_TEMPLATE) --out $(MNI152)

# Real tumor-free heads for training and a held-out test of them (trainer/volume_slices.py): FLAIR and T1 volumes
# of 23 older adults and two IXI T1s from the NiChart project's sample data, fetched at a pinned commit and checked
# against docs/healthy_heads_manifest.txt (source, licence: docs/healthy_heads.md). Subjects 17-23 are held back
# as HEALTHY_HEADS_TEST, never trained on, and their volumes are also kept as HEALTHY_HEADS_PROBE for the
# tumor-free probe (make probe-tumor-free PROBE_DIR=../data/healthy-heads-test-volumes): make data-healthy-heads
HEALTHY_HEADS_VOLUMES ?= ../data/healthy-heads-volumes
HEALTHY_HEADS ?= ../data/healthy-heads
HEALTHY_HEADS_TEST ?= ../data/healthy-heads-test
HEALTHY_HEADS_PROBE ?= ../data/healthy-heads-test-volumes
HEALTHY_HEADS_HELD_OUT ?= ^subj(1[7-9]|2[0-3])$$
NICHART_COMMIT ?= 1a04acb4ce41cc69472c79647ddeb85e73946544
# Where the pinned public files come from: raw.githubusercontent.com, or, on a machine without it, local git
# clones under GIT_MIRRORS as <owner>/<name> (bare or not; e.g. GIT_MIRRORS=/srv/mirrors): the same commit and
# sha256 are checked either way.
GIT_MIRRORS ?=
# $(call pinned,owner/name,commit,path,output)
pinned = if [ -n "$(GIT_MIRRORS)" ]; then git -C "$(GIT_MIRRORS)/$(1)" show "$(2):$(3)" > $(4); \
	else curl -fsSL "https://raw.githubusercontent.com/$(1)/$(2)/$(3)" -o $(4); fi
# $(call fetch_checked,owner/name,commit,path,output,sha256): fetched beside output, moved into place only when its
# sha256 matches (an interrupted or tampered fetch never lands); the shell loops below end with "|| exit 1"
fetch_checked = mkdir -p $$(dirname $(4)) && { $(call pinned,$(1),$(2),$(3),$(4).part); } && \
	echo "$(5)  $(4).part" | sha256sum --check --quiet && mv $(4).part $(4)
# Each volume is fetched once, checked against its sha256 and only then moved into place (an interrupted run
# resumes); lesions-flair/ holds NiChart's white-matter hyperintensity masks (DLWMLS) of the FLAIR volumes.
data-healthy-heads: $(STAMP)
	while read look subject path sha; do f=$(HEALTHY_HEADS_VOLUMES)/$$look/$$subject.nii.gz; test -f $$f && continue; \
		$(call fetch_checked,CBICA/NiChart_Project,$(NICHART_COMMIT),$$path,$$f,$$sha) || exit 1; \
	done < docs/healthy_heads_manifest.txt
	test -d $(HEALTHY_HEADS) || $(PY) -m trainer.volume_slices --input $(HEALTHY_HEADS_VOLUMES) --out $(HEALTHY_HEADS) \
		--exclude '$(HEALTHY_HEADS_HELD_OUT)' --source docs/healthy_heads.md \
		--non-tumor-lesions flair=$(HEALTHY_HEADS_VOLUMES)/lesions-flair
	test -d $(HEALTHY_HEADS_TEST) || $(PY) -m trainer.volume_slices --input $(HEALTHY_HEADS_VOLUMES) \
		--out $(HEALTHY_HEADS_TEST) --only '$(HEALTHY_HEADS_HELD_OUT)' --source docs/healthy_heads.md \
		--non-tumor-lesions flair=$(HEALTHY_HEADS_VOLUMES)/lesions-flair
	test -d $(HEALTHY_HEADS_PROBE) || { mkdir -p $(HEALTHY_HEADS_PROBE) && for f in $(HEALTHY_HEADS_VOLUMES)/flair/*.nii.gz $(HEALTHY_HEADS_VOLUMES)/t1/*.nii.gz; do \
		look=$$(basename $$(dirname $$f)); subject=$$(basename $$f .nii.gz); \
		if echo "$$subject" | grep -Eq '$(HEALTHY_HEADS_HELD_OUT)'; then cp $$f $(HEALTHY_HEADS_PROBE)/$${look}_$$subject.nii.gz; fi; \
		done; }

# The same heads cut sagittal and coronal (trainer.volume_slices --planes): v17 flags 35-61 % of such slices of
# heads without a tumor, 7-31 % of their axial ones (docs/model_v4_notes.md, row PL). Volumes of 2.5 mm voxels
# or finer only; the held-out subjects again apart: make data-healthy-planes
HEALTHY_PLANES ?= ../data/healthy-planes
HEALTHY_PLANES_TEST ?= ../data/healthy-planes-test
data-healthy-planes: data-healthy-heads
	test -d $(HEALTHY_PLANES) || $(PY) -m trainer.volume_slices --input $(HEALTHY_HEADS_VOLUMES) --out $(HEALTHY_PLANES) \
		--exclude '$(HEALTHY_HEADS_HELD_OUT)' --source docs/healthy_heads.md --planes sagittal,coronal \
		--non-tumor-lesions flair=$(HEALTHY_HEADS_VOLUMES)/lesions-flair
	test -d $(HEALTHY_PLANES_TEST) || $(PY) -m trainer.volume_slices --input $(HEALTHY_HEADS_VOLUMES) \
		--out $(HEALTHY_PLANES_TEST) --only '$(HEALTHY_HEADS_HELD_OUT)' --source docs/healthy_heads.md \
		--planes sagittal,coronal --non-tumor-lesions flair=$(HEALTHY_HEADS_VOLUMES)/lesions-flair

# Tumor-free probe (trainer/tumor_free_probe.py): MRI of people without a tumor (healthy volunteers, a stroke
# patient), scored by brain-score with each model; every flagged slice is a false alarm. The public volumes the
# model cards quote, with sources, licences and sha256, are in docs/tumor_free_probe.md; any folder of
# tumor-free NIfTI/DICOM volumes works: make probe-tumor-free PROBE_DIR=... PROBE_MODELS="..."
PROBE_DIR ?= ../data/tumor-free-probe
PROBE_MODELS ?= models/brain-tumor-cnn/21 models/brain-tumor-cnn/19 models/brain-tumor-cnn/3
probe-tumor-free: $(STAMP)
	$(PY) -m trainer.tumor_free_probe --input $(PROBE_DIR) $(foreach m,$(PROBE_MODELS),--model $(m))

# Fetches the probe's eight public volumes into PROBE_DIR, each checked against its sha256 before it is moved
# into place (docs/tumor_free_probe_manifest.txt; sources and licences in docs/tumor_free_probe.md):
# make data-tumor-free-probe
data-tumor-free-probe:
	grep -v '^#' docs/tumor_free_probe_manifest.txt | while read name repo commit path sha; do f=$(PROBE_DIR)/$$name; \
		test -f $$f && continue; $(call fetch_checked,$$repo,$$commit,$$path,$$f,$$sha) || exit 1; \
	done

# The BraTS Toolkit check (docs/brats_toolkit_check.md): two adult glioma patients of TCGA-LGG (sites DU and FG) in
# FLAIR, T2, T1 with and without contrast, co-registered and skull-stripped, sharing one automatic tumor mask: the
# same slices in every look, so a look the model misses shows beside one it finds. Scored only, never trained on
# (--eval-data-dir, brain-validate --sample $(BRATS_TOOLKIT)/t2): make data-brats-toolkit
BRATS_TOOLKIT_VOLUMES ?= ../data/brats-toolkit-volumes
BRATS_TOOLKIT ?= ../data/brats-toolkit
data-brats-toolkit: $(STAMP)
	grep -v '^#' docs/brats_toolkit_manifest.txt | while read case name repo commit path sha; do \
		f=$(BRATS_TOOLKIT_VOLUMES)/$$case/$$name; test -f $$f && continue; \
		$(call fetch_checked,$$repo,$$commit,$$path,$$f,$$sha) || exit 1; \
	done
	test -d $(BRATS_TOOLKIT) || $(PY) -m trainer.tumor_volume_slices --input $(BRATS_TOOLKIT_VOLUMES) \
		--out $(BRATS_TOOLKIT) --source docs/brats_toolkit_check.md

# T2-like twins of every LGG slice (trainer/t2_synthesis.py): LGG's FLAIR and T1 before contrast through a
# (FLAIR, T1) -> T2 intensity map learnt on brats-ped's co-registered real T2, each tumor twin with its FLAIR
# mask; training data only, never a test of T2 (make data-brats-toolkit is that): make data-lgg-t2syn
LGG_T2SYN ?= ../data/lgg-t2syn
data-lgg-t2syn: $(STAMP)
	test -d $(LGG_T2SYN) || $(PY) -m trainer.t2_synthesis --fit-on $(SHARED)/brats-ped --apply-to $(SHARED)/lgg \
		--t1 t1-pre --out $(LGG_T2SYN)

train-v7: $(STAMP)
	test -d $(FIGSHARE_MASKS) || $(PY) -m trainer.figshare_masks --brain-mri $(SHARED)/brain-mri \
		--figshare-images $(FIGSHARE_IMAGES) --borders $(FIGSHARE_BORDERS) --out $(FIGSHARE_MASKS)
	$(PY) -m trainer.lesion_train $(PREPARE) $(V7_ARGS) --init-from models/brain-tumor-cnn/4/model.keras \
		--learning-rate 1e-3 --epochs 5 --version 6
	$(PY) -m trainer.lesion_train $(PREPARE) $(V7_ARGS) --init-from $(MODEL_DIR)/brain-tumor-cnn/6/model.keras \
		--learning-rate 5e-4 --epochs 6 --version 7
	@echo "then, for each: python -m trainer.lesion_eval map-level <artifact> --write; python -m trainer.ood build <artifact>; python -m trainer.export <artifact>"

# Reproduces v8 (v7 + 5 epochs with v7's false positives drawn 4x as often; ~12 min of fit on 2 CPU cores)
# into MODEL_DIR (another folder than models/, which holds it); needs the brain-mri masks of train-v7:
# make train-v8 MODEL_DIR=/tmp/models
train-v8: $(STAMP)
	$(PY) -m trainer.lesion_train $(PREPARE) $(V7_ARGS) --init-from models/brain-tumor-cnn/7/model.keras --hard-negatives 4 \
		--learning-rate 3e-4 --epochs 5 --version 8
	@echo "then: python -m trainer.lesion_eval map-level <artifact> --write; python -m trainer.ood build <artifact>; python -m trainer.export <artifact>"

# $(call ensemble,LESION_ARTIFACT,CLASSIFIER_ARTIFACT,VERSION): that lesion map and that classifier in one graph
# (their log-odds added), evaluated on v8's data at target sensitivity 0.98 like a trained model, OOD reference, ONNX.
define ensemble
	$(PY) -m trainer.ensemble --lesion $(1) --classifier $(2) --out $(MODEL_DIR)/brain-tumor-cnn/_work/$(3)
	$(PY) -m trainer.lesion_train $(PREPARE) $(V7_ARGS) --target-sensitivity 0.98 \
		--from-checkpoint $(MODEL_DIR)/brain-tumor-cnn/_work/$(3)/best.keras --version $(3)
	$(PY) -m trainer.ood build $(MODEL_DIR)/brain-tumor-cnn/$(3)
	$(PY) -m trainer.export $(MODEL_DIR)/brain-tumor-cnn/$(3)
endef

# Rebuilds model v9, the default until 2026-12-04 (no training: v8's lesion map and v3's classifier combined, then evaluated on
# v8's data; ~5 min): make train-v9 MODEL_DIR=/tmp/models
train-v9: $(STAMP)
	$(call ensemble,models/brain-tumor-cnn/8,models/brain-tumor-cnn/3,9)

# Reproduces v10, v11's lesion map: v8 + 5 epochs with synthetic tumors painted into 30 % of the tumor-free
# training slices (augment.synthetic_tumor), v8's false positives drawn 4x, the final epoch kept (~14 min of fit
# on 2 CPU cores; needs the brain-mri masks of train-v7): make train-v10 MODEL_DIR=/tmp/models
train-v10: $(STAMP)
	$(PY) -m trainer.lesion_train $(PREPARE) $(V7_ARGS) --init-from models/brain-tumor-cnn/8/model.keras --hard-negatives 4 \
		--synth-tumors 0.3 --learning-rate 3e-4 --epochs 5 --select-on last --version 10
	$(PY) -m trainer.lesion_eval map-level $(MODEL_DIR)/brain-tumor-cnn/10 --write
	$(PY) -m trainer.ood build $(MODEL_DIR)/brain-tumor-cnn/10
	$(PY) -m trainer.export $(MODEL_DIR)/brain-tumor-cnn/10

# Rebuilds model v11, the default (no training: v10's lesion map and v3's classifier combined, then evaluated
# on v10's data; ~5 min): make train-v11 MODEL_DIR=/tmp/models
train-v11: $(STAMP)
	$(call ensemble,models/brain-tumor-cnn/10,models/brain-tumor-cnn/3,11)

# Rebuilds model v13, the default (no training: v10's lesion map and v3's classifier moved 0.3 of the way to its
# fine-tune v12 (WiSE-FT weight interpolation) combined, then evaluated on v10's data; ~5 min; needs v12 in
# models/ or MODEL_DIR): make train-v13 MODEL_DIR=/tmp/models
V12 ?= models/brain-tumor-cnn/12
train-v13: $(STAMP)
	$(PY) -m trainer.ensemble --lesion models/brain-tumor-cnn/10 --classifier models/brain-tumor-cnn/3 \
		--fine-tuned $(V12) --alpha 0.3 --out $(MODEL_DIR)/brain-tumor-cnn/_work/13
	$(PY) -m trainer.lesion_train $(PREPARE) $(V7_ARGS) --target-sensitivity 0.98 \
		--from-checkpoint $(MODEL_DIR)/brain-tumor-cnn/_work/13/best.keras --version 13
	$(PY) -m trainer.ood build $(MODEL_DIR)/brain-tumor-cnn/13
	$(PY) -m trainer.export $(MODEL_DIR)/brain-tumor-cnn/13

# $(call mark_member,version): records in the artifact that it is scored only inside ensembles (metadata member_of;
# brain-score and brain-validate refuse it alone unless --allow-member-model), as MEMBER_<version> says
define mark_member
	$(PY) -m screening_core.artifact member $(MODEL_DIR)/brain-tumor-cnn/$(1) $(MEMBER_$(1))
endef
MEMBER_12 = --of brain-tumor-cnn/13 --reason "v3 fine-tuned with BraTS-PEDs, scored only as the end point v13's classifier is moved 0.3 of the way to (no ONNX export or OOD reference)"
MEMBER_16 = --of brain-tumor-cnn/17 --of brain-tumor-cnn/19 --of brain-tumor-cnn/21 --of brain-tumor-cnn/23 --of brain-tumor-cnn/25 --of brain-tumor-cnn/27 --of brain-tumor-cnn/29 --of brain-tumor-cnn/30 --of brain-tumor-cnn/32 --of brain-tumor-cnn/35 --of brain-tumor-cnn/36 --of brain-tumor-cnn/37 --of brain-tumor-cnn/38 --of brain-tumor-cnn/39 --of brain-tumor-cnn/42 --of brain-tumor-cnn/44 --reason "a lesion map from random weights, weaker alone than v14's (brain-mri validation AUC 0.870), scored beside v14's map and a classifier"
MEMBER_18 = --of brain-tumor-cnn/19 --reason "a fine-tune of v3 scored only as the end point v19's classifier is moved 0.3 of the way to"
MEMBER_20 = --of brain-tumor-cnn/21 --reason "a fine-tune of v3 scored only as the end point v21's classifier is moved 0.6 of the way to"
MEMBER_22 = --of brain-tumor-cnn/23 --of brain-tumor-cnn/25 --of brain-tumor-cnn/27 --of brain-tumor-cnn/29 --of brain-tumor-cnn/30 --of brain-tumor-cnn/32 --of brain-tumor-cnn/35 --of brain-tumor-cnn/36 --of brain-tumor-cnn/37 --of brain-tumor-cnn/38 --of brain-tumor-cnn/39 --reason "a slice classifier scored only beside the lesion maps: alone it has no lesion map to show and ranks brats-sample's T2 at AUC 0.598"
MEMBER_24 = --of brain-tumor-cnn/25 --of brain-tumor-cnn/27 --of brain-tumor-cnn/29 --of brain-tumor-cnn/30 --of brain-tumor-cnn/32 --reason "a second draw of v22's classifier recipe, a worse one alone (brain-mri validation AUC 0.981), scored only beside v22 and the lesion maps"
MEMBER_26 = --of brain-tumor-cnn/27 --of brain-tumor-cnn/29 --of brain-tumor-cnn/30 --of brain-tumor-cnn/32 --reason "a third draw of v22's classifier recipe scored only beside v22, v24 and the lesion maps: alone it has no lesion map to show and ranks brats-sample's FLAIR at AUC 0.821"
MEMBER_28 = --of brain-tumor-cnn/29 --of brain-tumor-cnn/30 --of brain-tumor-cnn/32 --of brain-tumor-cnn/35 --of brain-tumor-cnn/36 --of brain-tumor-cnn/37 --of brain-tumor-cnn/38 --of brain-tumor-cnn/39 --of brain-tumor-cnn/42 --of brain-tumor-cnn/44 --reason "a lesion map trained without brain-mri: alone it ranks brain-mri's images below chance (AUC 0.437) and its own threshold flags 63 % of held-out older adults' axial FLAIR slices"
MEMBER_31 = --of brain-tumor-cnn/32 --of brain-tumor-cnn/35 --of brain-tumor-cnn/36 --of brain-tumor-cnn/37 --of brain-tumor-cnn/38 --of brain-tumor-cnn/39 --of brain-tumor-cnn/42 --of brain-tumor-cnn/44 --reason "a map trained only to outline, the overlays' map of v32 at weight 0 in its score; its own slice score is no detector (no slice loss)"
MEMBER_33 = --of brain-tumor-cnn/35 --of brain-tumor-cnn/36 --of brain-tumor-cnn/37 --of brain-tumor-cnn/38 --of brain-tumor-cnn/39 --of brain-tumor-cnn/42 --of brain-tumor-cnn/44 --reason "a second draw of v22's classifier recipe (seed 43) on v22's validation split, scored beside v22 and v34"
MEMBER_34 = --of brain-tumor-cnn/35 --of brain-tumor-cnn/36 --of brain-tumor-cnn/37 --of brain-tumor-cnn/38 --of brain-tumor-cnn/39 --of brain-tumor-cnn/42 --of brain-tumor-cnn/44 --reason "a third draw of v22's classifier recipe (seed 44, imitated skull stripping) on v22's validation split, scored beside v22 and v33"
MEMBER_41 = --of brain-tumor-cnn/42 --reason "v22 trained 4 more epochs with real tumors set into its tumor-free FLAIR, T2 and brain-mri slices, scored beside v33, v34 and the lesion maps: alone it has no lesion map to show"
MEMBER_43 = --of brain-tumor-cnn/44 --reason "v22 trained 4 more epochs with real tumors set into its tumor-free axial FLAIR, T2 and brain-mri slices, scored beside v33, v34 and the lesion maps: alone it has no lesion map to show"

# Model v14, the lesion map trained with real tumor-free heads (make data-healthy-heads; docs/healthy_heads.md), and
# no dark paint on T1 without contrast; then v15, v14 with v13's classifier (seeded; ~10 min of fit on 2 CPU cores
# and ~15 min of evaluation): make train-v14 train-v15 MODEL_DIR=/tmp/models
HH_ARGS = --data-dir $(SHARED)/lgg --data-dir $(SHARED)/brats-ped --data-dir $(SHARED)/brain-mri \
	--data-dir $(HEALTHY_HEADS) --eval-data-dir $(SHARED)/brats-sample --eval-data-dir $(HEALTHY_HEADS_TEST) \
	--holdout-pattern '$(HOLDOUT)' --masks-dir brain-mri=$(FIGSHARE_MASKS) --label-only-tumors skip \
	--shares lgg=0.4,brats-ped=0.2,brain-mri=0.25,healthy-heads=0.15 --steps-per-epoch 250 --seed $(SEED) \
	--model-dir $(MODEL_DIR)
V14 ?= $(MODEL_DIR)/brain-tumor-cnn/14
train-v14: data-healthy-heads
	$(PY) -m trainer.lesion_train $(PREPARE) $(HH_ARGS) --init-from models/brain-tumor-cnn/10/model.keras --hard-negatives 4 \
		--synth-tumors 0.3 --synth-kinds bright,enhancing,bright-or-enhancing --learning-rate 2e-4 --epochs 4 \
		--select-on last --version 14
	$(PY) -m trainer.lesion_eval map-level $(V14) --write
	$(PY) -m trainer.ood build $(V14)
	$(PY) -m trainer.export $(V14)
train-v15: data-healthy-heads
	$(PY) -m trainer.ensemble --lesion $(V14) --classifier models/brain-tumor-cnn/3 \
		--fine-tuned $(V12) --alpha 0.3 --out $(MODEL_DIR)/brain-tumor-cnn/_work/15
	$(PY) -m trainer.lesion_train $(PREPARE) $(V7_ARGS) --eval-data-dir $(HEALTHY_HEADS_TEST) --target-sensitivity 0.98 \
		--from-checkpoint $(MODEL_DIR)/brain-tumor-cnn/_work/15/best.keras --version 15
	$(PY) -m trainer.ood build $(MODEL_DIR)/brain-tumor-cnn/15
	$(PY) -m trainer.export $(MODEL_DIR)/brain-tumor-cnn/15

# Model v16, a second lesion map trained from scratch on v14's data (seeded; ~22 min of fit on 2 CPU cores), and
# v17, v15 with v16's map beside v14's, the two maps' log-odds averaged (no training; ~10 min of evaluation):
# make train-v16 train-v17 MODEL_DIR=/tmp/models
V16 ?= $(MODEL_DIR)/brain-tumor-cnn/16
train-v16: data-healthy-heads
	$(PY) -m trainer.lesion_train $(PREPARE) $(HH_ARGS) --synth-tumors 0.3 --synth-kinds bright,enhancing,bright-or-enhancing \
		--learning-rate 2e-3 --epochs 12 --version 16
	$(PY) -m trainer.lesion_eval map-level $(V16) --write
	$(PY) -m trainer.ood build $(V16)
	$(PY) -m trainer.export $(V16)
	$(call mark_member,16)
train-v17: data-healthy-heads
	$(PY) -m trainer.ensemble --lesion $(V14) --lesion $(V16) --classifier models/brain-tumor-cnn/3 \
		--fine-tuned $(V12) --alpha 0.3 --out $(MODEL_DIR)/brain-tumor-cnn/_work/17
	$(PY) -m trainer.lesion_train $(PREPARE) $(V7_ARGS) --eval-data-dir $(HEALTHY_HEADS_TEST) --target-sensitivity 0.98 \
		--from-checkpoint $(MODEL_DIR)/brain-tumor-cnn/_work/17/best.keras --version 17
	$(PY) -m trainer.ood build $(MODEL_DIR)/brain-tumor-cnn/17
	$(PY) -m trainer.export $(MODEL_DIR)/brain-tumor-cnn/17
	$(PY) -m trainer.development_set --model $(MODEL_DIR)/brain-tumor-cnn/17 --data-dir $(SHARED)/brain-mri \
		--data-dir $(SHARED)/lgg --data-dir $(SHARED)/brats-ped --data-dir $(SHARED)/brats-sample --data-dir $(HEALTHY_HEADS)

# v18, v19's classifier fine-tune: v12's recipe (v3 + 6 epochs at 3e-4 with BraTS-PEDs) with the healthy heads cut
# sagittal and coronal at 0.13 of each batch (make data-healthy-planes; docs/model_v4_notes.md row PL; ~13 min of fit).
# v19, the default: v17 with that classifier in v12's place, moved 0.3 of the way from v3 as before (no training;
# ~10 min of evaluation): make train-v18 train-v19 MODEL_DIR=/tmp/models
V18 ?= $(MODEL_DIR)/brain-tumor-cnn/18
# $(call classifier_finetune,extra data dirs,extra flags,version): v12's fine-tune of v3 with more data
define classifier_finetune
	$(PY) -m trainer.task $(PREPARE) $(foreach d,$(DATA) $(SHARED)/brats-ped $(1),--data-dir $(d)) \
		$(foreach d,$(EVAL_DATA),--eval-data-dir $(d)) --group-pattern '$(GROUP_PATTERN)' --holdout-pattern '$(HOLDOUT)' \
		--threshold-sources '$(THRESHOLD_SOURCES)' --model-dir $(MODEL_DIR) --seed $(SEED) \
		--early-stopping-patience 15 --target-sensitivity 0.98 --augment contrast-strip --lesion-weight 5.0 \
		--init-from models/brain-tumor-cnn/3/model.keras --epochs 6 --learning-rate 3e-4 $(2) --version $(3)
endef
# $(call ensemble_artifact,fine-tuned classifier,alpha,version): v14 and v16 with v3 moved alpha of the way to the
# fine-tune, evaluated like a trained model (with the held-out healthy heads in every plane), then its OOD reference,
# ONNX export and development fingerprints; $(call ensemble_artifact,,,version,,classifier) takes that classifier
# as it is instead of v3 moved (further --classifier and --lesion members may follow it)
define ensemble_artifact
	$(PY) -m trainer.ensemble --lesion $(V14) --lesion $(V16) \
		$(if $(5),--classifier $(5),--classifier models/brain-tumor-cnn/3 --fine-tuned $(1) --alpha $(2)) \
		--mirror $(or $(4),none) --out $(MODEL_DIR)/brain-tumor-cnn/_work/$(3)
	$(PY) -m trainer.lesion_train $(PREPARE) $(V7_ARGS) --eval-data-dir $(HEALTHY_HEADS_TEST) --eval-data-dir $(HEALTHY_PLANES_TEST) \
		--target-sensitivity 0.98 --from-checkpoint $(MODEL_DIR)/brain-tumor-cnn/_work/$(3)/best.keras --version $(3)
	$(PY) -m trainer.ood build $(MODEL_DIR)/brain-tumor-cnn/$(3)
	$(PY) -m trainer.export $(MODEL_DIR)/brain-tumor-cnn/$(3)
	$(PY) -m trainer.development_set --model $(MODEL_DIR)/brain-tumor-cnn/$(3) --data-dir $(SHARED)/brain-mri \
		--data-dir $(SHARED)/lgg --data-dir $(SHARED)/brats-ped --data-dir $(SHARED)/brats-sample --data-dir $(HEALTHY_HEADS) \
		--data-dir $(HEALTHY_PLANES)
endef
V18_SHARES = brain-mri=0.29,lgg=0.29,brats-ped=0.29,healthy-planes=0.13
train-v18: data-healthy-planes
	$(call classifier_finetune,$(HEALTHY_PLANES),--source-shares $(V18_SHARES),18)
	$(call mark_member,18)
train-v19: data-healthy-planes
	$(call ensemble_artifact,$(V18),0.3,19)

# v20, v21's classifier fine-tune: v18's recipe with the healthy heads' axial slices too (0.11 of each batch, beside
# their sagittal and coronal ones at 0.11) and 0.3 of FLAIR training slices made T2-like (--fluid-bright; ~9 min of
# fit). v21, the default: v19 with v3 moved 0.6 of the way to v20 (not 0.3; docs/model_v4_notes.md row WA; no
# training, ~10 min of evaluation): make train-v20 train-v21 MODEL_DIR=/tmp/models
V20 ?= $(MODEL_DIR)/brain-tumor-cnn/20
V20_SHARES = brain-mri=0.26,lgg=0.26,brats-ped=0.26,healthy-planes=0.11,healthy-heads=0.11
train-v20: data-healthy-planes
	$(call classifier_finetune,$(HEALTHY_PLANES) $(HEALTHY_HEADS),--fluid-bright 0.3 --source-shares $(V20_SHARES),20)
	$(call mark_member,20)
train-v21: data-healthy-planes
	$(call ensemble_artifact,$(V20),0.6,21)

# v22, v23's classifier: v20's data, shares and T2-like FLAIR, trained from random weights for v3's 20 epochs at
# 1e-3 instead of fine-tuning v3 (~30 min of fit on 2 CPU cores). v23, the default: v14's and v16's maps with v22 as
# the classifier, no part of v3 (docs/model_v4_notes.md row SCR; no training, ~10 min of evaluation):
# make train-v22 train-v23 MODEL_DIR=/tmp/models
V22 ?= $(MODEL_DIR)/brain-tumor-cnn/22
# $(call scratch_classifier,seed,version[,augment]): v20's data, shares and T2-like FLAIR from random weights, v3's
# 20 epochs (augment: contrast-strip unless given)
# v22's classifier recipe but for the seed, split, preprocessing, augmentation, schedule and start (v22, v24, v26, v33, v34, v41)
CLASSIFIER_RECIPE = $(foreach d,$(DATA) $(SHARED)/brats-ped $(HEALTHY_PLANES) $(HEALTHY_HEADS),--data-dir $(d)) \
	$(foreach d,$(EVAL_DATA),--eval-data-dir $(d)) --group-pattern '$(GROUP_PATTERN)' --holdout-pattern '$(HOLDOUT)' \
	--threshold-sources '$(THRESHOLD_SOURCES)' --model-dir $(MODEL_DIR) --early-stopping-patience 15 \
	--target-sensitivity 0.98 --lesion-weight 5.0 --fluid-bright 0.3 --source-shares $(V20_SHARES)
define scratch_classifier
	$(PY) -m trainer.task $(PREPARE) $(CLASSIFIER_RECIPE) --seed $(1) --augment $(or $(3),contrast-strip) --epochs 20 \
		$(if $(4),--split-seed $(4)) --version $(2)
endef
train-v22: data-healthy-planes
	$(call scratch_classifier,$(SEED),22)
	$(call mark_member,22)
train-v23: data-healthy-planes
	$(call ensemble_artifact,,,23,,$(V22))

# v24, v25's second classifier: v22's recipe with seed 43 (~30 min of fit). v25, the default: v23 with v24 beside v22,
# the two classifiers' log-odds averaged as the two maps' are (docs/model_v4_notes.md row SCR2; no training, ~10 min
# of evaluation): make train-v22 train-v24 train-v25 MODEL_DIR=/tmp/models
V24 ?= $(MODEL_DIR)/brain-tumor-cnn/24
train-v24: data-healthy-planes
	$(call scratch_classifier,43,24)
	$(call mark_member,24)
train-v25: data-healthy-planes
	$(call ensemble_artifact,,,25,,$(V22) --classifier $(V24))

# v26, v27's third classifier: v22's recipe with seed 44 and imitated skull stripping stretched as prepare() stretches
# a real stripped slice (--augment contrast-strip-prepared; ~30 min of fit). v27, the default: v25 with v26 beside v22
# and v24, the three classifiers' log-odds averaged (docs/model_v4_notes.md row SCR3; no training, ~10 min of
# evaluation): make train-v22 train-v24 train-v26 train-v27 MODEL_DIR=/tmp/models
V26 ?= $(MODEL_DIR)/brain-tumor-cnn/26
train-v26: data-healthy-planes
	$(call scratch_classifier,44,26,contrast-strip-prepared)
	$(call mark_member,26)
train-v27: data-healthy-planes
	$(call ensemble_artifact,,,27,,$(V22) --classifier $(V24) --classifier $(V26))

# v28, v29's third map: v16's map recipe without brain-mri (LGG 0.65, BraTS-PEDs 0.2, the healthy heads 0.15 of each
# batch; issue 24's cross-collection check map, docs/model_v4_notes.md row XC2's run 300; ~15 min of fit; its T2
# reading is seed 42's: seed 43 reads T2 at chance, row M3C). v29, the
# default: v27 with v28's map beside v14's and v16's, the three maps' log-odds averaged (row M3C; no training, ~10 min
# of evaluation): make train-v22 train-v24 train-v26 train-v28 train-v29 MODEL_DIR=/tmp/models
V28 ?= $(MODEL_DIR)/brain-tumor-cnn/28
NO_BRAIN_MRI_ARGS = --data-dir $(SHARED)/lgg --data-dir $(SHARED)/brats-ped --data-dir $(HEALTHY_HEADS) \
	--eval-data-dir $(SHARED)/brain-mri --eval-data-dir $(SHARED)/brats-sample --eval-data-dir $(HEALTHY_HEADS_TEST) \
	--holdout-pattern '$(HOLDOUT)' --label-only-tumors skip --shares lgg=0.65,brats-ped=0.2,healthy-heads=0.15 \
	--steps-per-epoch 250 --seed $(SEED) --model-dir $(MODEL_DIR)
train-v28: data-healthy-heads
	$(PY) -m trainer.lesion_train $(PREPARE) $(NO_BRAIN_MRI_ARGS) --synth-tumors 0.3 \
		--synth-kinds bright,enhancing,bright-or-enhancing --learning-rate 2e-3 --epochs 12 --version 28
	$(PY) -m trainer.lesion_eval map-level $(V28) --write
	$(PY) -m trainer.ood build $(V28)
	$(PY) -m trainer.export $(V28)
	$(call mark_member,28)
train-v29: data-healthy-planes
	$(call ensemble_artifact,,,29,,$(V22) --classifier $(V24) --classifier $(V26) --lesion $(V28))

# v30, the default: v29 with each classifier's log-odds floored at -5.5 (probability 0.004), so no classifier can veto
# a lesion the maps find with more confidence than it ever gave a validation tumor (lowest -3.3 to -4.3): the highest
# floor, in steps of 0.5, at which no validation source's sensitivity or specificity at the threshold moves (row VF;
# `python -m trainer.classifier_floor $(MODEL_DIR)/brain-tumor-cnn/29` chooses it again from v29's validation rows;
# no training, ~10 min of evaluation): make train-v22 train-v24 train-v26 train-v28 train-v30 MODEL_DIR=/tmp/models
CLASSIFIER_FLOOR ?= -5.5
train-v30: data-healthy-planes
	$(call ensemble_artifact,,,30,,$(V22) --classifier $(V24) --classifier $(V26) --lesion $(V28) \
		--classifier-floor $(CLASSIFIER_FLOOR))

# v31, v32's overlay map: a U-Net half v14's width (8-64 channels, a quarter of its operations) trained only to
# outline (no slice loss, no painted tumors) on the looks whose masks show the lesion: LGG FLAIR, BraTS-PEDs' FLAIR
# and T2, brain-mri's figshare outlines (T1 with contrast); tumor slices with a mask 0.6 of each batch; the split
# is HH_ARGS's (v14's and v30's validation patients), whose shares and steps the later flags replace (seeded;
# ~6 min of fit; docs/model_v4_notes.md row OUT). v32, the default: v30 with v31's map as the overlays' (weight 0
# in the score, so v30's scores within float rounding; ~10 min of evaluation): make train-v31 train-v32 MODEL_DIR=/tmp/models
V31 ?= $(MODEL_DIR)/brain-tumor-cnn/31
OUTLINE_SOURCES = ^(lgg/flair|brats-ped/(flair|t2)|brain-mri)$$
train-v31: data-healthy-heads
	$(PY) -m trainer.lesion_train $(PREPARE) $(HH_ARGS) --train-sources '$(OUTLINE_SOURCES)' --slice-weight 0 \
		--shares lgg=0.6,brats-ped=0.15,brain-mri=0.25 --tumor-share 0.6 --filters 8,16,32,64 --epochs 8 \
		--steps-per-epoch 150 --learning-rate 2e-3 --select-on last --version 31
	$(PY) -m trainer.lesion_eval map-level $(V31) --write
	$(PY) -m trainer.ood build $(V31)
	$(PY) -m trainer.export $(V31)
	$(call mark_member,31)
train-v32: data-healthy-planes
	$(call ensemble_artifact,,,32,,$(V22) --classifier $(V24) --classifier $(V26) --lesion $(V28) \
		--classifier-floor $(CLASSIFIER_FLOOR) --overlay $(V31))

# v33 and v34, v35's second and third classifiers: v24's and v26's recipes (seeds 43 and 44) on v22's validation
# split (--split-seed 42): v24 and v26 had been split with their own seeds and trained on 72 % and 83 % of the
# ensemble's validation slices (docs/model_v4_notes.md row SPL; ~45 min of fit each). v35: v32 with them in place of
# v24 and v26, its threshold chosen on validation slices no member trained on (~10 min of evaluation):
# make train-v33 train-v34 train-v35 MODEL_DIR=/tmp/models
V33 ?= $(MODEL_DIR)/brain-tumor-cnn/33
V34 ?= $(MODEL_DIR)/brain-tumor-cnn/34
train-v33: data-healthy-planes
	$(call scratch_classifier,43,33,,$(SEED))
	$(call mark_member,33)
train-v34: data-healthy-planes
	$(call scratch_classifier,44,34,contrast-strip-prepared,$(SEED))
	$(call mark_member,34)
train-v35: data-healthy-planes
	$(call ensemble_artifact,,,35,,$(V22) --classifier $(V33) --classifier $(V34) --lesion $(V28) \
		--classifier-floor $(CLASSIFIER_FLOOR) --overlay $(V31))

# v36, the default in session 31: v35's members and weights scored on preprocessing v2 (prepare() removes a white or grey frame
# first; identical to v1 for every unframed image: docs/model_v4_notes.md row FRM). The build is v35's; the
# evaluation that writes the artifact prepares every image with v2 (~10 min of evaluation):
# make train-v36 MODEL_DIR=/tmp/models (with v14-v34 in models/ or MODEL_DIR)
train-v36: PREP = gray-headcrop-pnorm-v2
train-v36: data-healthy-planes
	$(call ensemble_artifact,,,36,,$(V22) --classifier $(V33) --classifier $(V34) --lesion $(V28) \
		--classifier-floor $(CLASSIFIER_FLOOR) --overlay $(V31))

# v37, the default: v36's members and weights on prepare() v3 (gray-headcrop-pnorm-v3: small marks detached from the head at the
# image's edge, such as burned-in text and scale bars, stay out of the head box); no training, ~15 min of evaluation:
# make train-v37 MODEL_DIR=/tmp/models (with v14-v34 in models/ or MODEL_DIR)
train-v37: PREP = gray-headcrop-pnorm-v3
train-v37: data-healthy-planes
	$(call ensemble_artifact,,,37,,$(V22) --classifier $(V33) --classifier $(V34) --lesion $(V28) \
		--classifier-floor $(CLASSIFIER_FLOOR) --overlay $(V31))

# The orientation network v38 puts before its members (trainer.orientation: every training slice turned by a random
# quarter, the turn its label, and 0.3 of them again crudely skull-stripped; seeded, ~20 min of fit on 2 CPU cores;
# v37's scored slices stay out, and are its evaluation):
# make train-orientation MODEL_DIR=/tmp/models
ORIENTATION ?= $(MODEL_DIR)/slice-orientation/1
train-orientation: PREP = gray-headcrop-pnorm-v3
train-orientation: data-healthy-planes
	$(PY) -m trainer.orientation $(PREPARE) \
		$(foreach d,$(SHARED)/brain-mri $(SHARED)/lgg $(SHARED)/brats-ped $(HEALTHY_HEADS) $(HEALTHY_PLANES),--data-dir $(d)) \
		--exclude models/brain-tumor-cnn/37/validation_predictions.csv --epochs 30 --stripped-share 0.3 --seed $(SEED) \
		--out $(ORIENTATION)
	$(PY) -m screening_core.artifact member $(ORIENTATION) --of brain-tumor-cnn/38 --of brain-tumor-cnn/39 --of brain-tumor-cnn/42 --of brain-tumor-cnn/44 --reason "$(ORIENTATION_MEMBER)"
ORIENTATION_MEMBER = an orientation network: its output is which way a slice is turned, not a tumor probability

# v38 = v37 behind the orientation network: a slice it is sure was turned sideways reaches every member upright
# (no training but the orientation network's, ~12 min of evaluation): make train-orientation train-v38 MODEL_DIR=/tmp/models
train-v38: PREP = gray-headcrop-pnorm-v3
train-v38: data-healthy-planes
	$(call ensemble_artifact,,,38,,$(V22) --classifier $(V33) --classifier $(V34) --lesion $(V28) \
		--classifier-floor $(CLASSIFIER_FLOOR) --overlay $(V31) --orientation $(ORIENTATION))

# v39 = v38 on prepare() v4 (gray-headcrop-pnorm-v4: a negative copy, dark head on a bright background, is turned back
# into a positive first; no slice of any collection as it is is taken for one: docs/model_v4_notes.md row NEG);
# no training, ~12 min of evaluation: make train-v39 MODEL_DIR=/tmp/models (with slice-orientation/1 and v16-v34 there)
train-v39: PREP = gray-headcrop-pnorm-v4
train-v39: data-healthy-planes
	$(call ensemble_artifact,,,39,,$(V22) --classifier $(V33) --classifier $(V34) --lesion $(V28) \
		--classifier-floor $(CLASSIFIER_FLOOR) --overlay $(V31) --orientation $(ORIENTATION))

# $(call transplant_finetune,base artifact,seed,version[,flags]): the base classifier trained 4 more epochs at 3e-4 of
# v22's recipe, on prepare() v4, with half of its FLAIR, T2 and brain-mri tumor-free training slices above the skull
# base given a real FLAIR/T2 training tumor (--transplant-tumors 0.5, augment.transplant_tumor; ~15 min of fit on 2 CPU
# cores; docs/model_v4_notes.md rows TPF)
define transplant_finetune
	$(PY) -m trainer.task --preprocessing gray-headcrop-pnorm-v4 $(CLASSIFIER_RECIPE) --seed $(2) --split-seed $(SEED) \
		--augment contrast-strip --epochs 4 --learning-rate 3e-4 --init-from $(1)/model.keras --transplant-tumors 0.5 \
		$(4) --version $(3)
	$(call mark_member,$(3))
endef

# v41, v42's first classifier: v22's transplant fine-tune. v42: v39 with v41 in v22's place (~12 min of evaluation):
# make train-v41 train-v42 MODEL_DIR=/tmp/models (with slice-orientation/1 and v14-v34 there)
V41 ?= $(MODEL_DIR)/brain-tumor-cnn/41
train-v41: data-healthy-planes
	$(call transplant_finetune,$(V22),$(SEED),41)
train-v42: PREP = gray-headcrop-pnorm-v4
train-v42: data-healthy-planes
	$(call ensemble_artifact,,,42,,$(V41) --classifier $(V33) --classifier $(V34) --lesion $(V28) \
		--classifier-floor $(CLASSIFIER_FLOOR) --overlay $(V31) --orientation $(ORIENTATION))

# v43, v44's first classifier: v41 with the tumors set into axial slices only (--transplant-axial-only): v41's went
# into the healthy planes' sagittal and coronal FLAIR too, at an axial donor's place. v44, the default: v39 with v43 in
# v22's place (docs/model_v4_notes.md row TPF-A; ~12 min of evaluation):
# make train-v43 train-v44 MODEL_DIR=/tmp/models (with slice-orientation/1 and v14-v34 there)
V43 ?= $(MODEL_DIR)/brain-tumor-cnn/43
train-v43: data-healthy-planes
	$(call transplant_finetune,$(V22),$(SEED),43,--transplant-axial-only)
train-v44: PREP = gray-headcrop-pnorm-v4
train-v44: data-healthy-planes
	$(call ensemble_artifact,,,44,,$(V43) --classifier $(V33) --classifier $(V34) --lesion $(V28) \
		--classifier-floor $(CLASSIFIER_FLOOR) --overlay $(V31) --orientation $(ORIENTATION))

# Reproduces model v3, the slice classifier (seeded; ~40 min of fit on 2 CPU cores):
# make train-v3 TRAIN_ARGS="--version 3"
train-v3: $(STAMP)
	$(PY) -m trainer.task $(PREPARE) $(foreach d,$(DATA),--data-dir $(d)) $(foreach d,$(EVAL_DATA),--eval-data-dir $(d)) \
		--group-pattern '$(GROUP_PATTERN)' --holdout-pattern '$(HOLDOUT)' \
		--threshold-sources '$(THRESHOLD_SOURCES)' --model-dir $(MODEL_DIR) --epochs $(EPOCHS) --seed $(SEED) \
		--early-stopping-patience 15 --target-sensitivity 0.98 --augment contrast-strip --lesion-weight 5.0 \
		$(TRAIN_ARGS)

# Reproduces v12, the second classifier of v13: v3 + 6 epochs at 3e-4 of v3's own recipe with BraTS-PEDs (real
# T2, T1, T1ce and FLAIR tumors, which no other collection has) added to its data (seeded; ~10 min of fit on 2 CPU
# cores): make train-v12 MODEL_DIR=/tmp/models
train-v12: $(STAMP)
	$(PY) -m trainer.task $(PREPARE) $(foreach d,$(DATA) $(SHARED)/brats-ped,--data-dir $(d)) \
		$(foreach d,$(EVAL_DATA),--eval-data-dir $(d)) --group-pattern '$(GROUP_PATTERN)' --holdout-pattern '$(HOLDOUT)' \
		--threshold-sources '$(THRESHOLD_SOURCES)' --model-dir $(MODEL_DIR) --seed $(SEED) \
		--early-stopping-patience 15 --target-sensitivity 0.98 --augment contrast-strip --lesion-weight 5.0 \
		--init-from models/brain-tumor-cnn/3/model.keras --epochs 6 --learning-rate 3e-4 --version 12
	$(call mark_member,12)

# v4 is itself the check "trained without brain-mri" (make train scores all of brain-mri); attach notes:
# make checks ARTIFACT=models/brain-tumor-cnn/4 NOTES=notes.md
checks: $(STAMP)
	$(PY) -m trainer.generalisation $(ARTIFACT) $(if $(NOTES),--notes $(NOTES))

# The v3 classifier's checks (each ~15 min), with Grad-CAM localisation:
# make checks-v3 ARTIFACT=models/brain-tumor-cnn/3
checks-v3: $(STAMP)
	$(PY) -m trainer.task $(PREPARE) --data-dir $(SHARED)/brain-mri --eval-data-dir $(SHARED)/lgg \
		--eval-data-dir $(SHARED)/brats-sample --group-pattern '$(GROUP_PATTERN)' --model-dir $(CHECK_DIR)/mri \
		--version 1 --epochs 12 --seed $(SEED) --target-sensitivity 0.98 --augment contrast --no-resume
	$(PY) -m trainer.task $(PREPARE) --data-dir $(SHARED)/lgg --eval-data-dir $(SHARED)/brain-mri \
		--eval-data-dir $(SHARED)/brats-sample --group-pattern '$(GROUP_PATTERN)' --model-dir $(CHECK_DIR)/lgg \
		--version 1 --epochs 12 --seed $(SEED) --target-sensitivity 0.98 --augment contrast --no-resume \
		--threshold-sources '^lgg/flair$$'
	$(PY) -m trainer.localisation $(ARTIFACT) --mask-dir $(SHARED)/lgg/masks
	$(PY) -m trainer.generalisation $(ARTIFACT) --check $(CHECK_DIR)/mri/brain-tumor-cnn/1 \
		--check $(CHECK_DIR)/lgg/brain-tumor-cnn/1 $(if $(NOTES),--notes $(NOTES))

clean:
	rm -rf $(VENV) build dist *.egg-info
