# SPDX-License-Identifier: Apache-2.0
"""The object store (csrc/store): content keys (:mod:`.keys`), the self-validating object format
(:mod:`.format`), where objects live under a root (:mod:`.paths`), the store itself
(:mod:`.store`) and its capacity janitor (:mod:`.janitor`)."""
from .keys import Namespace, chain_keys, fold_extras
from .store import MISSING_ERRNOS, GetResult, Store, describe

__all__ = ["MISSING_ERRNOS", "GetResult", "Namespace", "Store", "chain_keys", "describe",
           "fold_extras"]
