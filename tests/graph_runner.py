"""Run API-format graphs in-process through ComfyUI's own validation and executor."""
import asyncio
import uuid

import execution
import nodes


class _RecordingServer:
    """The part of PromptServer the executor talks to; keeps every message it is sent."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}
        self.messages = []
        self.node_replace_manager = self

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def send_progress_text(self, text, node_id, sid=None):
        self.messages.append(("progress_text", {"node": node_id, "text": text}))

    def register(self, *args, **kwargs):  # node_replace_manager.register: nothing to replace in tests
        pass

    def queue_updated(self):
        pass


class GraphError(RuntimeError):
    def __init__(self, message, details):
        super().__init__(message)
        self.details = details


class GraphRunner:
    _instance = None

    @classmethod
    def instance(cls):
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self):
        import server
        import tiny_nodes_loader

        self.server = _RecordingServer()
        server.PromptServer.instance = self.server  # nodes that send previews/progress text reach it
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        tiny_nodes_loader.register_test_packs()
        self.executor = execution.PromptExecutor(self.server, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})

    def run(self, prompt: dict, outputs: list[str] | None = None) -> dict:
        """Validate and execute `prompt`; returns {node_id: ui output}. Raises GraphError with
        ComfyUI's own error message when validation or execution fails."""
        prompt_id = str(uuid.uuid4())
        valid, error, good_outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, outputs))
        if not valid:
            raise GraphError(f"invalid graph: {error} {node_errors}", {"error": error, "node_errors": node_errors})
        self.server.messages.clear()
        self.executor.execute(prompt, prompt_id, {}, good_outputs)
        if not self.executor.success:
            errs = [d for e, d in self.executor.status_messages if e in ("execution_error", "execution_interrupted")]
            msg = errs[0].get("exception_message", "interrupted") if errs else "unknown failure"
            raise GraphError(msg, errs[0] if errs else {})
        return dict(self.executor.history_result.get("outputs", {}))

    def node_outputs(self, node_id: str):
        """Python outputs of an executed node, from the executor's output cache."""
        entry = asyncio.run(self.executor.caches.outputs.get(node_id))
        return entry.outputs if entry is not None else None
