"""Roles to engines. Roles whose specs are equal share one loaded model and one KV cache."""

from __future__ import annotations

import threading

from models.engine import Engine, EngineConfig
from models.loading import load_model
from models.spec import ModelSpec, Role, RoleConfig


class EnginePool:
    def __init__(self, roles: RoleConfig, engine_config: EngineConfig = EngineConfig()):
        self.roles = roles
        self.engine_config = engine_config
        self._engines: dict[ModelSpec, Engine] = {}
        self._lock = threading.Lock()

    def engine_for(self, role: Role) -> Engine:
        """The engine serving `role`, loading its model on first use."""
        spec = self.roles.spec_for(role)
        with self._lock:
            if spec not in self._engines:
                self._engines[spec] = Engine(load_model(spec), self.engine_config)
            return self._engines[spec]

    def loaded(self) -> dict[ModelSpec, Engine]:
        return dict(self._engines)

    def close(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.close()
            self._engines.clear()
