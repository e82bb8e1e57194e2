"""The workflows: ``track`` (a proxy with CLD, and the other scores), ``cld_coreset`` /
``write_coreset`` (earlier ``select_coreset`` / ``select_to_file``), ``train`` (on all data,
a coreset, or with dynamic pruning), ``run`` (the whole pipeline) and ``bench`` (CLD against
the baselines), with their reports and plots (``report``) and exports (``export``). One
module per workflow (``tracking``, ``coresets``, ``training``, ``end_to_end``, ``bench``), the
retraining-cell executor (``retraining``) and ``workflows``, which re-exports them all. Needs the
``pipeline`` extra."""

from .._extras import PIPELINE, require_all

require_all(PIPELINE, "cldfast.pipeline")  # torchvision, tqdm, matplotlib, scikit-learn

from .workflows import (EMBEDDED_NOTE, DataSpec, PruneSpec, RunResult, Selection,  # noqa: E402
                        cld_coreset, load_data, run, select_coreset, select_to_file, track,
                        tracked_epochs, train, write_coreset)

__all__ = ["DataSpec", "PruneSpec", "RunResult", "EMBEDDED_NOTE", "load_data", "track",
           "tracked_epochs", "cld_coreset", "write_coreset", "select_coreset", "select_to_file",
           "Selection", "train", "run"]
