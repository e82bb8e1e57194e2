"""The workflows behind the CLI: track a proxy, select a coreset, train a model, or run the
whole pipeline. Each function takes plain arguments and writes into an output folder; every
default is the library's (:mod:`cldfast.defaults`; a recipe left out is the dataset's default
recipe, see :func:`cldfast.training.default_recipe`), and the CLI only parses arguments and
calls these, so ``cldfast.pipeline.run()`` from Python does what ``cldfast run`` does, with one
exception: ``run(jobs=)`` defaults to 1 (retraining cells one after the other, in-process), as
worker processes would re-run a calling script that has no ``if __name__ == "__main__":``
guard, while ``cldfast run`` chooses the number of jobs itself.

Your own objects go through the same functions: ``data`` may be a dataset name, a
:class:`DataSpec`, or a :class:`cldfast.data.DatasetBundle` built from your datasets with
:func:`cldfast.data.bundle_from_datasets`; ``arch`` / ``model`` may be an architecture name,
an ``nn.Module`` (each run starts from a copy of it) or a factory
``fn(num_classes, input_shape)``; the recipe chooses the optimizer (SGD or AdamW), the
schedule (multistep, cosine, one-cycle), warm-up epochs and label smoothing.

One module per workflow, re-exported here (this module holds no code of its own):

* :mod:`~cldfast.pipeline.sources`: ``DataSpec``, ``load_data``;
* :mod:`~cldfast.pipeline.tracking`: ``track``, ``tracked_epochs``;
* :mod:`~cldfast.pipeline.coresets`: ``cld_coreset``, ``write_coreset``, ``Selection``
  (earlier names ``select_coreset``, ``select_to_file``);
* :mod:`~cldfast.pipeline.training`: ``train``, ``PruneSpec``;
* :mod:`~cldfast.pipeline.end_to_end`: ``run``, ``RunResult``;
* :mod:`~cldfast.pipeline.retraining`: the retraining-cell executor (``retrain_cell``,
  ``retrain_cells``, ``retrain_jobs``);
* :mod:`~cldfast.pipeline.findings`: ``EMBEDDED_NOTE``, read from ``findings.json``.

To replace a workflow in a test, patch it in its own module (e.g.
``cldfast.pipeline.tracking.track``): the others call it there.
"""

from __future__ import annotations

from ..selection.balanced import DEFAULT_FRACTIONS
from .retraining import (CellNotStarted, available_cores, retrain_cell, retrain_cells,
                         retrain_jobs)
from .coresets import Selection, cld_coreset, select_coreset, select_to_file, write_coreset
from .end_to_end import RunResult, run
from .findings import EMBEDDED_NOTE
from .sources import DataSpec, load_data
from .tracking import track, tracked_epochs
from .training import PruneSpec, train

__all__ = ["DataSpec", "PruneSpec", "Selection", "tracked_epochs", "track", "cld_coreset",
           "write_coreset", "select_coreset", "select_to_file", "train", "retrain_cell",
           "retrain_cells", "retrain_jobs", "available_cores", "CellNotStarted", "run",
           "RunResult", "load_data", "EMBEDDED_NOTE", "DEFAULT_FRACTIONS"]
