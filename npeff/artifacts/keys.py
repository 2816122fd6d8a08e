"""Every HDF5 dataset and attribute name npeff reads or writes.

The names in the first block are those of the reference implementation (algorithm.md §1.6), so
files can be exchanged with it. npeff's own metadata lives under ``npeff/`` and in ``npeff.*``
attributes; a file with only the reference names loads too.
"""

# --- reference names: LRM / LVRM PEF files -------------------------------------------------
DATA_GROUP = "data"
ATTR_N_CLASSES = "n_classes"  # attribute on the `data` group
ATTR_N_PARAMETERS = "n_parameters"  # attribute on the `data` group
ATTR_MIN_PROB_CLASS = "min_prob_class"  # attribute on the `data` group (LVRM)
LABELS = "data/labels"
LOGITS = "data/logits"
VALUES = "data/values"
COL_OFFSETS = "data/col_offsets"
ROW_INDICES = "data/row_indices"
PEF_FROBENIUS_NORMS = "data/pef_frobenius_norms"
COL_SIZES = "data/col_sizes"  # LVRM
RANKS = "data/ranks"  # LVRM

# --- reference names: D-PEF files ------------------------------------------------------------
D_FISHER_GROUP = "data/fisher"
ATTR_DENSE_FISHER_SIZE = "dense_fisher_size"  # attribute on `data/fisher`, written as int32
D_VALUES = "data/fisher/values"
D_INDICES = "data/fisher/indices"
D_PREDICTED_LOGITS = "data/predicted_logits"
D_DENSE_FISHER_NORMS = "data/dense_fisher_norms"

# --- reference names: dataset-level diagonal Fisher (D-DSF) ----------------------------------
DSF_FISHER = "data/fisher"

# --- reference names: decompositions ----------------------------------------------------------
W = "data/W"
G = "data/G"
NEW_TO_OLD_COL_INDICES = "data/new_to_old_col_indices"
LOSSES_GROUP = "losses"
ATTR_LOG_LOSS_FREQUENCY = "log_loss_frequency"  # attribute on the `losses` group
LOSSES_G_ONLY = "losses/G_only"
LOSSES_JOINT = "losses/joint"
# D-NPEFF
H = "data/H"  # dense dataset, or a group (sparse CSR) with the names below
REDUCE_KEPT_INDICES = "data/reduce_kept_indices"
ATTR_FULL_DENSE_SIZE = "full_dense_size"  # attribute on `data/reduce_kept_indices`, 1-element array
H_ATTR_SHAPE = "shape"
H_VALUES = "data/H/values"
H_ROW_INDICES = "data/H/row_indices"  # CSR row pointer [r+1], int64
H_COLUMN_INDICES = "data/H/column_indices"  # int32 [nnz]

# --- npeff's own metadata --------------------------------------------------------------------
NPEFF_GROUP = "npeff"
ATTR_SCHEMA_VERSION = "schema_version"  # attribute on `npeff`
ATTR_ARTIFACT = "artifact"  # attribute on `npeff`: "pefs", "decomposition", "perturbation", ...
ATTR_KIND = "kind"  # attribute on `npeff`: "lrm", "lvrm", "diag"
ATTR_COMPLETE = "complete"  # attribute on `npeff`: True once the file is finished
ATTR_LAYOUT = "parameter_layout"  # attribute on `npeff`: JSON of ParameterLayout
ATTR_CONFIG = "config"  # attribute on `npeff`: resolved Hydra config as YAML/JSON text
ATTR_MODEL_IDENTITY = "model_identity"  # attribute on `npeff`: JSON (checkpoint path, hash, class)
ATTR_SOURCE = "source"  # attribute on `npeff`: JSON (source files the artifact was made from)

SCHEMA_VERSION = 1

# --- npeff perturbation results (perturbation.h5; owner: perturbation engineer) --------------
# One dataset per PerturbationResult field; sign axis 0 = +, 1 = −. Metadata is a JSON attribute.
PERTURBATION_GROUP = "perturbation"
PERT_COMPONENT_INDICES = "perturbation/component_indices"
PERT_KL_TOP = "perturbation/kl_top"
PERT_KL_BASELINE = "perturbation/kl_baseline"
PERT_KL_TOP_REVERSE = "perturbation/kl_top_reverse"
PERT_KL_BASELINE_REVERSE = "perturbation/kl_baseline_reverse"
PERT_KL_RATIO = "perturbation/kl_ratio"
PERT_BEST_SIGN = "perturbation/best_sign"
PERT_PEF_NORM_RATIO = "perturbation/pef_norm_ratio"
PERT_ACC_TOP_BEFORE = "perturbation/acc_top_before"
PERT_ACC_TOP_AFTER = "perturbation/acc_top_after"
PERT_ACC_BASELINE_BEFORE = "perturbation/acc_baseline_before"
PERT_ACC_BASELINE_AFTER = "perturbation/acc_baseline_after"
PERT_ACC_ALL_AFTER = "perturbation/acc_all_after"
PERT_TOP_INDICES = "perturbation/top_indices"
PERT_BASELINE_INDICES = "perturbation/baseline_indices"
ATTR_PERT_MAGNITUDE = "magnitude"  # attribute on `perturbation`
ATTR_PERT_ACC_ALL_BEFORE = "acc_all_before"  # attribute on `perturbation`
ATTR_PERT_METADATA = "metadata"  # attribute on `perturbation`: JSON

# --- npeff's own metadata: PEF files (fisher engineer) ---------------------------------------
ATTR_N_WRITTEN = "n_written"  # attribute on `npeff`: examples committed so far (resume point)
ATTR_FINGERPRINT = "fingerprint"  # attribute on `npeff`: JSON of the options a resume must match
ATTR_METADATA = "metadata"  # attribute on `npeff`: JSON of any other metadata
ATTR_DSF_MODE = "dataset_fisher_mode"  # attribute on `npeff`: "expectation" / "sampling"
DSF_PARTIAL_SUM = "npeff/dataset_fisher_sum"  # float64 [m] running sum while a PEF run is open

# --- npeff's own metadata for decompositions (decomposition engineer) ------------------------
CONVERGENCE_GROUP = "npeff/convergence"  # datasets: steps [s], cosine [s, r], snapshots [s, n, r]
EXAMPLE_INDICES = "npeff/example_indices"  # int64 [n]: position of each PEF's example in its split

# --- COAR attributions (attributions.h5; owner: COAR engineer) -------------------------------
# Ablation dataset (streamed, resumable): keep-masks and margins, one row per ablated model.
COAR_GROUP = "coar"
COAR_MASKS = "coar/masks"  # uint8 [m, |C|] keep-masks (1 = unit kept)
COAR_MARGINS = "coar/margins"  # float32 [m, n] correct-class margin of each example per mask
COAR_LABELS = "coar/labels"  # int64 [n]
COAR_BASE_MARGINS = "coar/base_margins"  # float32 [n] margins of the unablated model
COAR_EXAMPLE_INDICES = "coar/example_indices"  # int64 [n] positions in the data split
COAR_WEIGHTS = "coar/weights"  # float32 [n, |C|] attributions (margin gained by keeping c)
COAR_BIAS = "coar/bias"  # float32 [n]
COAR_EVAL_GROUP = "coar/eval"
COAR_EVAL_ALPHAS = "coar/eval/alphas"  # float64 [A]
COAR_EVAL_MASKS = "coar/eval/masks"  # uint8 [A, t, |C|] held-out masks per ablation rate
COAR_EVAL_MARGINS = "coar/eval/margins"  # float32 [A, t, n]
COAR_LOO_MARGINS = "coar/eval/loo_margins"  # float32 [|C|, n] margins with one unit ablated
COAR_GP_WEIGHTS = "coar/eval/gp_weights"  # float32 [n, |C|] gradient×parameter baseline
ATTR_COAR_UNITS = "unit_map"  # attribute on `npeff`: JSON of npeff.models.units.UnitMap
ATTR_COAR_SETTINGS = "settings"  # attribute on `npeff`: JSON (alpha, seed, solver, ...)
ATTR_COAR_FITTED = "fitted"  # attribute on `npeff`: True once weights/bias are written
