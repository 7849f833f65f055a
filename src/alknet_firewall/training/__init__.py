"""The offline wing: fitting, calibrating and evaluating codebooks on labelled texts.

It sits above the runtime, as scikit-learn's ``calibration`` sits above its estimators: it
imports the runtime modules (model, features, codebook, scoring), and no runtime module
imports it (``tests/test_layering.py``). Only the command line and the lazy public API
(``alknet_firewall.calibrate``, ``extract``, ``CodebookBuilder``) reach into it.

* :mod:`.corpus`: the labelled JSONL reader and the window features of many texts;
* :mod:`.trainset`: the fitting set derived from the corpus (selection, augmentations, spans);
* :mod:`.fitting`: :class:`CodebookBuilder` and :func:`calibrate`;
* :mod:`.evaluation`: detection metrics and reports (``alknet-firewall eval``).
"""

from __future__ import annotations

from .corpus import LabelledText, cached_extract, extract, read_corpus
from .evaluation import summarise, write_report
from .fitting import CodebookBuilder, calibrate
from .trainset import TrainingText, span_labels, training_set

__all__ = [
    "CodebookBuilder",
    "LabelledText",
    "TrainingText",
    "cached_extract",
    "calibrate",
    "extract",
    "read_corpus",
    "span_labels",
    "summarise",
    "training_set",
    "write_report",
]
