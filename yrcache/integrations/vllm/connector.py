# SPDX-License-Identifier: Apache-2.0
"""``YRCacheConnector``: the class vLLM instantiates, once per process and role. Thin by design:
the scheduler side (:mod:`.scheduler`) and the worker side (:mod:`.worker`) hold the logic, and
:mod:`.compat` every vLLM internal they touch.

    --kv-transfer-config '{"kv_connector": "YRCacheConnector",
                           "kv_connector_module_path": "yrcache.integrations.vllm",
                           "kv_role": "kv_both",
                           "kv_connector_extra_config": {"root": "/mnt/shared/kv"}}'
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from . import compat, spaces

if compat.VLLM_IMPORT_ERROR:
    raise ImportError(f"yrcache's vLLM connector needs vLLM 0.32: {compat.VLLM_IMPORT_ERROR}")
from .compat import KVConnectorBase_V1, KVConnectorMetadata, KVConnectorRole, KVConnectorStats
from .config import ConnectorConfig
from .metadata import YRCacheMetadata, YRCacheStats

logger = logging.getLogger("yrcache.vllm")
T = TypeVar("T")


def _guarded(default: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """A bug in a hook is logged (with its traceback, once per hook) and the hook returns its
    neutral value: yrcache never takes the serving engine down."""
    def deco(fn: Callable[..., T]) -> Callable[..., T]:
        seen: list[bool] = []

        @functools.wraps(fn)
        def run(*args: Any, **kw: Any) -> T:
            try:
                return fn(*args, **kw)
            except Exception:  # noqa: BLE001
                if not seen:
                    seen.append(True)
                    logger.exception("yrcache: %s failed; the step goes on without it",
                                     fn.__name__)
                return default() if callable(default) else default
        return run
    return deco


class YRCacheConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: Any, role: KVConnectorRole, kv_cache_config: Any) -> None:
        super().__init__(vllm_config, role, kv_cache_config)
        compat.log_through_vllm()
        compat.check_version()
        self._cfg = ConnectorConfig.from_extra(
            self._kv_transfer_config.kv_connector_extra_config)
        self._sched: Any = None
        self._worker: Any = None
        try:
            dep = spaces.derive(vllm_config, kv_cache_config, self._cfg)
        except (TypeError, ValueError) as e:   # unsupported deployment: vLLM runs on without it
            logger.error("yrcache: connector DISABLED: %s", e)
            return
        if role == KVConnectorRole.SCHEDULER:
            from .scheduler import SchedulerSide
            if compat.set_load_failure_policy(vllm_config, self._cfg.load_failure_policy):
                logger.info("yrcache: kv_load_failure_policy set to %r: a chunk that fails to "
                            "load is recomputed, the request goes on",
                            self._cfg.load_failure_policy)
            self._sched = SchedulerSide(vllm_config, self._cfg, dep,
                                        role=str(self._kv_transfer_config.kv_role or "kv_both"))
        else:
            from .worker import WorkerSide
            self._worker = WorkerSide(vllm_config, self._cfg, dep)

    @property
    def scheduler_side(self) -> Any:
        """The scheduler-role half (``SchedulerSide``), or None in a worker or when disabled."""
        return self._sched

    @property
    def worker_side(self) -> Any:
        """The worker-role half (``WorkerSide``), or None in the scheduler or when disabled."""
        return self._worker

    @property
    def requires_kv_delivery(self) -> bool:
        return False   # a cache: a dropped store is only a future miss

    # -- config-time ------------------------------------------------------------------------------
    @classmethod
    def get_required_kvcache_layout(cls, vllm_config: Any) -> str | None:
        return compat.required_layout(vllm_config)

    @classmethod
    def requires_piecewise_for_cudagraph(cls, extra_config: dict[str, Any]) -> bool:
        return True   # the per-layer hooks do not run inside a full CUDA-graph replay

    @classmethod
    def build_kv_connector_stats(cls, data: dict[str, Any] | None = None
                                 ) -> KVConnectorStats | None:
        return YRCacheStats(data=dict(data or {}))

    @classmethod
    def build_prom_metrics(cls, vllm_config: Any, metric_types: dict[type, type],
                           labelnames: list[str], per_engine_labelvalues: dict[int, list[object]]
                           ) -> Any:
        from .prom import YRCachePromMetrics
        return YRCachePromMetrics(vllm_config, metric_types, labelnames, per_engine_labelvalues)

    # -- scheduler side ---------------------------------------------------------------------------
    def bind_kv_cache_manager(self, kv_cache_manager: Any) -> None:
        super().bind_kv_cache_manager(kv_cache_manager)
        if self._sched is not None:
            self._sched.bind_kv_cache_manager(kv_cache_manager)

    @_guarded(None)
    def on_new_request(self, request: Any) -> None:
        if self._sched is not None:
            self._sched.on_new_request(request)

    @_guarded((0, False))
    def get_num_new_matched_tokens(self, request: Any,
                                   num_computed_tokens: int) -> tuple[int | None, bool]:
        if self._sched is None:
            return 0, False
        return self._sched.get_num_new_matched_tokens(request, num_computed_tokens)

    @_guarded(None)
    def update_state_after_alloc(self, request: Any, blocks: Any,
                                 num_external_tokens: int) -> None:
        if self._sched is not None:
            self._sched.update_state_after_alloc(request, blocks, num_external_tokens)

    @_guarded(YRCacheMetadata)   # the scheduler side already keeps planned loads on errors
    def build_connector_meta(self, scheduler_output: Any) -> KVConnectorMetadata:
        if self._sched is None:
            return YRCacheMetadata()
        return self._sched.build_connector_meta(scheduler_output)

    @_guarded(None)
    def update_connector_output(self, connector_output: Any) -> None:
        if self._sched is not None:
            self._sched.update_connector_output(connector_output)

    @_guarded((False, None))
    def request_finished(self, request: Any, block_ids: list[int]) -> tuple[bool, dict | None]:
        if self._sched is None:
            return False, None
        return self._sched.request_finished(request, block_ids)

    def reset_cache(self) -> bool | None:
        return self._sched.reset_cache() if self._sched is not None else True

    # -- worker side ------------------------------------------------------------------------------
    def register_kv_caches(self, kv_caches: dict[str, Any]) -> None:
        if self._worker is not None:
            self._worker.register(kv_caches)

    @_guarded(None)
    def handle_preemptions(self, kv_connector_metadata: Any) -> None:
        if self._worker is not None:
            self._worker.handle_preemptions(kv_connector_metadata)

    @_guarded(None)
    def bind_connector_metadata(self, connector_metadata: KVConnectorMetadata) -> None:
        super().bind_connector_metadata(connector_metadata)
        if self._worker is not None:
            self._worker.bind(connector_metadata)

    @_guarded(None)
    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        if self._worker is not None:
            self._worker.start_load()

    @_guarded(None)
    def wait_for_layer_load(self, layer_name: str) -> None:
        if self._worker is not None:
            self._worker.wait_for_layer_load(layer_name)

    @_guarded(None)
    def save_kv_layer(self, layer_name: str, kv_layer: Any, attn_metadata: Any,
                      **kwargs: Any) -> None:
        if self._worker is not None:
            self._worker.save_layer(layer_name)

    @_guarded(None)
    def wait_for_save(self) -> None:
        if self._worker is not None:
            self._worker.wait_for_save()

    @_guarded((None, None))
    def get_finished(self, finished_req_ids: set[str]
                     ) -> tuple[set[str] | None, set[str] | None]:
        if self._worker is None:
            return None, None
        return self._worker.get_finished(finished_req_ids)

    @_guarded(set)
    def get_block_ids_with_load_errors(self) -> set[int]:
        return self._worker.load_errors() if self._worker is not None else set()

    @_guarded(None)
    def build_connector_worker_meta(self) -> Any:
        return self._worker.worker_meta() if self._worker is not None else None

    # -- both -------------------------------------------------------------------------------------
    @_guarded(None)
    def get_kv_connector_stats(self) -> KVConnectorStats | None:
        side = self._sched if self._sched is not None else self._worker
        return side.stats() if side is not None else None

    def shutdown(self) -> None:
        for side in (self._sched, self._worker):
            if side is not None:
                side.shutdown()
