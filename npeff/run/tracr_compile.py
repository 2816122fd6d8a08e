"""Stage ``npeff-tracr-compile``: compile a RASP program with tracr (the ``tracr`` extra), check the
PyTorch port against tracr's forward and ``rasp.evaluate``, and export it (``npeff.tracr.compile``)."""

from __future__ import annotations

from npeff.run.common import stage_main
from npeff.tracr.compile import run

main = stage_main("tracr_compile", run, single_process=True)


if __name__ == "__main__":
    main()
