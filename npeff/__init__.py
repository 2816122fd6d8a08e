"""npeff: Non-Negative Per-Example Fisher Factorization with PyTorch Lightning and Hydra."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from npeff.errors import NpeffFileNotFoundError

__version__ = "0.1.0"


def _conf() -> Path:
    return Path(str(resources.files("npeff") / "conf"))


def config_dir() -> Path:
    """The directory of npeff's Hydra configs (``conf/`` of the source tree).

    Read as package data (``npeff/conf`` is a link to the top-level ``conf/`` that setuptools
    copies into the wheel), so an installed npeff finds its configs wherever it is installed.
    Fails with what to do when they are missing."""
    path = _conf()
    if not (path / "pipeline.yaml").is_file():
        raise NpeffFileNotFoundError(
            f"npeff's configs are missing ({path} has no pipeline.yaml); reinstall npeff "
            "(pip install .) or, in a source checkout, restore the link npeff/conf -> ../conf"
        )
    return path


# for hydra.main / initialize_config_dir (an absolute path; not checked here, so that importing a
# library module never fails on configs: config_dir() checks)
CONFIG_PATH = str(_conf())
