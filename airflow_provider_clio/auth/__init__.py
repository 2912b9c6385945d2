# SPDX-License-Identifier: Apache-2.0
"""OAuth tokens for Clio: where the pair lives, the token endpoint protocol, and the manager that refreshes.

Public: the token stores users may pass to the hook (:class:`VariableTokenStore`, the default,
:class:`FileTokenStore`, :class:`MemoryTokenStore`), the :class:`TokenStore` protocol, :class:`TokenSet` and
:class:`TokenManager`. The modules behind them are internal:

- :mod:`~airflow_provider_clio.auth.stores`: :class:`TokenSet` and the stores;
- :mod:`~airflow_provider_clio.auth.oauth`: the forms and answers of the OAuth token endpoint;
- :mod:`~airflow_provider_clio.auth.tokens`: :class:`TokenManager` (expiry, refresh, rotation races, saves).
"""

from __future__ import annotations

from airflow_provider_clio.auth.oauth import REAUTHORIZE_HINT, PostCallable
from airflow_provider_clio.auth.stores import (
    VARIABLE_KEY_PREFIX,
    FileTokenStore,
    MemoryTokenStore,
    SupportsRefreshLock,
    TokenSet,
    TokenStore,
    VariableTokenStore,
    parse_expires_at,
)
from airflow_provider_clio.auth.tokens import TokenManager

__all__ = [
    "REAUTHORIZE_HINT",
    "VARIABLE_KEY_PREFIX",
    "FileTokenStore",
    "MemoryTokenStore",
    "PostCallable",
    "SupportsRefreshLock",
    "TokenManager",
    "TokenSet",
    "TokenStore",
    "VariableTokenStore",
    "parse_expires_at",
]
