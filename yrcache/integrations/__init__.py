# SPDX-License-Identifier: Apache-2.0
"""Adapters for serving engines (each imports its engine only when used)."""
