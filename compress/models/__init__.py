"""The three speech models, all LightningModules with the same batch contract.

``MODELS`` maps a recipe's model name to its class.

Example:
    >>> from compress.models import MODELS
    >>> sorted(MODELS)
    ['conformer_ctc', 'ctc_lstm', 'rnnt']
"""

from compress.models.conformer_ctc import ConformerCTC
from compress.models.ctc_lstm import CTCLSTM
from compress.models.rnnt import RNNT

MODELS = {"ctc_lstm": CTCLSTM, "rnnt": RNNT, "conformer_ctc": ConformerCTC}

__all__ = ["CTCLSTM", "RNNT", "ConformerCTC", "MODELS"]
