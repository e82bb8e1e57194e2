"""The other per-sample scores, recorded in the same proxy run as CLD: the streaming
recorders (forgetting, AUM, EL2N, uncertainty, cartography) and the final-model pass
(GraNd, embeddings for the geometry methods)."""

from .final import embed_and_grand, last_linear, make_final_scores
from .recorders import (AUMRecorder, CartographyRecorder, EL2NRecorder, ForgettingRecorder,
                        UncertaintyRecorder, default_el2n_epoch, recorders_for_training)

__all__ = ["ForgettingRecorder", "AUMRecorder", "EL2NRecorder", "UncertaintyRecorder",
           "CartographyRecorder", "recorders_for_training", "default_el2n_epoch", "last_linear",
           "embed_and_grand", "make_final_scores"]
