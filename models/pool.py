"""Roles to engines. Roles whose specs are equal share one loaded model and one KV cache."""

from __future__ import annotations

import threading

from fimble.models.engine import Engine, EngineConfig
from fimble.models.loading import LoadedModel, load_model
from fimble.models.spec import ModelSpec, Role, RoleConfig


def start_engine(spec: ModelSpec, config: EngineConfig = EngineConfig(), loaded: LoadedModel | None = None) -> Engine:
    """Load the model and start its engine from a short-lived thread.

    Each thread that runs torch ops gets its own OpenMP worker pool. When the loading thread lives
    on (the main thread, say) beside the generation thread, the two pools fight over the cores:
    on 2 vCPUs a decode step took 73-90 ms instead of 47-59 ms (12 against 19-21 tok/s, py-spy
    showed ~75% of samples in libgomp waits). Loading in a thread that then exits leaves the
    generation thread the only pool. `loaded`: the model, loaded already (by a standby daemon).
    """
    box: dict[str, Engine | BaseException] = {}

    def build() -> None:
        try:
            box["engine"] = Engine(loaded or load_model(spec), config)
        except BaseException as error:  # re-raised in the caller's thread
            box["error"] = error

    loader = threading.Thread(target=build, name="fimble-load")
    loader.start()
    loader.join()
    if "error" in box:
        raise box["error"]
    return box["engine"]


class EnginePool:
    def __init__(self, roles: RoleConfig, engine_config: EngineConfig = EngineConfig(), preloaded: dict[ModelSpec, LoadedModel] | None = None):
        """`preloaded`: models a standby daemon loaded before it took over (models/standby.py);
        those no role's spec names any more (the config changed meanwhile) are let go."""
        self.roles = roles
        self.engine_config = engine_config
        self._engines: dict[ModelSpec, Engine] = {}
        used = {roles.spec_for(role) for role in Role}
        self._preloaded = {spec: model for spec, model in (preloaded or {}).items() if spec in used}
        self._lock = threading.Lock()

    def engine_for(self, role: Role) -> Engine:
        """The engine serving `role`, loading its model on first use."""
        spec = self.roles.spec_for(role)
        with self._lock:
            if spec not in self._engines:
                self._engines[spec] = start_engine(spec, self.engine_config, self._preloaded.pop(spec, None))
            return self._engines[spec]

    def preloaded_roles(self) -> list[Role]:
        """One role for each preloaded model not started yet, the first that names its spec."""
        roles = {self.roles.spec_for(role): role for role in reversed(Role)}
        return [roles[spec] for spec in self._preloaded]

    def loaded(self) -> dict[ModelSpec, Engine]:
        return dict(self._engines)

    def close(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.close()
            self._engines.clear()
