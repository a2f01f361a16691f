# SPDX-License-Identifier: Apache-2.0
"""The object store (csrc/store): content keys (:mod:`.keys`), the self-validating object format
(:mod:`.format`), where objects live under a root (:mod:`.paths`), the store itself
(:mod:`.store`: a facade over its read path :mod:`.reader`, its publish path :mod:`.writer` and
its capacity janitor :mod:`.janitor`), and the maintenance primitives they and the ``yrcache``
command share (:mod:`.check`)."""
from .format import describe
from .keys import Namespace, chain_keys, fold_extras
from .reader import MISSING_ERRNOS, GetResult
from .store import Store

__all__ = ["MISSING_ERRNOS", "GetResult", "Namespace", "Store", "chain_keys", "describe",
           "fold_extras"]
