"""The model catalog behind the front doors: the registry with live facts, and which chat
model answers requests that name none."""

from __future__ import annotations

import logging

from shared.errors import Conflict, InvalidInput, NotFound
from shared.jobs import now
from shared.registry import ModelSpec, Registry
from shared.store.chat_model import ChatModelChoice
from shared.store.fleet import Fleet
from shared.store.jobs import JobStore
from shared.store.on_demand import Board, OnDemandBoard
from web.protocols.catalog import ModelCard, ModelState, WorkerState

log = logging.getLogger(__name__)


class ModelCatalog:
    """The registry as clients see it: live facts, lookups and the default models."""

    def __init__(
        self,
        registry: Registry,
        store: JobStore,
        fleet: Fleet,
        choice: ChatModelChoice,
        on_demand: OnDemandBoard | None = None,
    ) -> None:
        self.registry = registry
        self.store = store
        self.fleet = fleet
        self.choice = choice
        self.on_demand = on_demand
        self.created = int(now())  # OpenAI's model objects carry a creation time

    def spec(self, name: str, param: str = "model") -> ModelSpec:
        """Return a registry model by id or alias.

        :raises NotFound: not in the registry.
        """
        spec = self.registry.get(name)
        if spec is None:
            raise NotFound(
                f"model {name!r} is not in the registry", param=param, code="model_not_found"
            )
        return spec

    def board(self) -> Board:
        """Return what `conveyor up` starts on demand (empty without `conveyor up`)."""
        return self.on_demand.read() if self.on_demand is not None else Board()

    def card(self, spec: ModelSpec, board: Board | None = None) -> ModelCard:
        """Return one model with its live facts: queue depth, workers online, loaded."""
        workers = self.fleet.workers(spec.id)
        depth = self.store.queue_depth(spec.id)
        return ModelCard.of(spec, self.created, depth, workers, board or self.board())

    def models(self) -> list[ModelCard]:
        """Return the registry with live facts."""
        board = self.board()
        return [self.card(spec, board) for spec in self.registry]

    def model(self, name: str) -> ModelCard:
        """Return one model (by id or alias) with its live facts.

        :raises NotFound: not in the registry.
        """
        return self.card(self.spec(name))

    def states(self) -> list[ModelState]:
        """Return every model with its live facts and the state of each worker serving it."""
        out, board = [], self.board()
        for spec in self.registry:
            workers = self.fleet.workers(spec.id)
            depth = self.store.queue_depth(spec.id)
            card = ModelCard.of(spec, self.created, depth, workers, board)
            out.append(ModelState(**dict(card), workers=[WorkerState.of(w) for w in workers]))
        return out

    def loaded(self) -> list[str]:
        """Return the ids of the models some worker has loaded."""
        return [card.id for card in self.models() if card.loaded]

    def default_model(self, task: str) -> ModelSpec | None:
        """Return the model for a request that names none: for chat, the one chosen with
        select_chat_model() while it is still in the registry, else the registry's."""
        if task == "chat":
            chosen = self.choice.get()
            spec = self.registry.get(chosen) if chosen else None
            if spec is not None and task in spec.tasks:
                return spec
        return self.registry.default_for(task)

    def default_id(self, task: str) -> str | None:
        """Return the id of default_model(task), or None when the task has none."""
        spec = self.default_model(task)
        return spec.id if spec else None

    def select_chat_model(self, name: str) -> ModelSpec:
        """Make a chat model that a worker serves the default for requests naming none.

        Workers load their models at start; this chooses among those, it loads nothing.
        :raises NotFound: not in the registry. :raises InvalidInput: not a chat model.
        :raises Conflict: no worker has it loaded.
        """
        spec = self.spec(name, param="model_name")
        if "chat" not in spec.tasks:
            raise InvalidInput(
                f"model {spec.id} does not chat (it supports {spec.tasks})",
                param="model_name",
                code="unsupported_task",
            )
        if not any(w.get("loaded") for w in self.fleet.workers(spec.id)):
            raise Conflict(
                f"no worker has model {spec.id} loaded; start one (conveyor worker "
                f"--model {spec.id}, or conveyor up --model {spec.id}) and set it "
                f"again",
                code="model_not_loaded",
            )
        self.choice.set(spec.id)
        log.info("default chat model set to %s", spec.id)
        return spec
