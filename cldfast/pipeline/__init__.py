"""The workflows: ``track`` (a proxy with CLD, and the other scores), ``select_coreset`` /
``select_to_file``, ``train`` (on all data, a coreset, or with dynamic pruning), ``run`` (the
whole pipeline) and ``bench`` (CLD against the baselines), with their reports and plots
(``report``) and exports (``export``). Needs the ``pipeline`` extra."""

from .workflows import (EMBEDDED_NOTE, DataSpec, PruneSpec, RunResult, load_data, run,
                        Selection, select_coreset, select_to_file, track, tracked_epochs,
                        train)

__all__ = ["DataSpec", "PruneSpec", "RunResult", "EMBEDDED_NOTE", "load_data", "track",
           "tracked_epochs", "select_coreset", "select_to_file", "Selection", "train", "run"]
