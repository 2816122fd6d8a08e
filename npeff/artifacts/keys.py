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
