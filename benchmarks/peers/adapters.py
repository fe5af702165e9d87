"""One adapter per RLM library: its REPL's lifecycle and its full run, each spoken in that
library's own protocol (code fence, batched sub-call, finish convention).

This file runs inside each library's own virtual environment (`driver.py` imports it there), so
it imports only the library it drives, and only when asked for.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, ClassVar


class Adapter:
    """A library at one sandbox kind. Programs are written once with `{batch}` for the batched
    sub-call and `FINISH(expr)` on their last line; `step` renders them in the library's protocol."""

    batch = "llm_query_batched"
    #: Settings this adapter chose for fairness (recorded with the figures).
    settings: ClassVar[dict[str, Any]] = {}

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def code(self, program: str) -> str:
        body, found, finish = program.rpartition("FINISH(")
        if not found:
            return program.replace("{batch}", self.batch)
        return body.replace("{batch}", self.batch) + self.finish(finish[:-1])

    def finish(self, expr: str) -> str:
        return f"answer['content'] = str({expr})\nanswer['ready'] = True"

    def step(self, program: str) -> str:
        raise NotImplementedError

    def start(self) -> Any:
        """A REPL ready to run code (the first statement has run)."""
        raise NotImplementedError

    def execute(self, repl: Any, code: str) -> None:
        raise NotImplementedError

    def close(self, repl: Any) -> None:
        raise NotImplementedError

    def run(self, base_url: str, question: str, context: str, turns: int) -> str:
        """One whole run against the model server; returns the final answer."""
        raise NotImplementedError


class Ours(Adapter):
    batch = "llm_batch"
    settings: ClassVar[dict[str, Any]] = {"max_sub_concurrency": 64, "max_concurrency": 64}

    def step(self, program: str) -> str:
        return f"Running code.\n```python\n{self.code(program)}\n```"

    def start(self) -> Any:
        from sandbox import create_sandbox

        # A sandbox's channels belong to the event loop it started on: one loop per REPL.
        loop = asyncio.new_event_loop()
        box = create_sandbox(self.kind)
        loop.run_until_complete(self._started(box))
        return loop, box

    @staticmethod
    async def _started(box: Any) -> None:
        await box.start()
        await box.execute("x = 1")

    def execute(self, repl: Any, code: str) -> None:
        loop, box = repl
        loop.run_until_complete(box.execute(code))

    def close(self, repl: Any) -> None:
        loop, box = repl
        try:
            loop.run_until_complete(box.close())
        finally:
            loop.close()

    def run(self, base_url: str, question: str, context: str, turns: int) -> str:
        import rlm

        result = rlm.run(question, context, model="bench", base_url=base_url, sandbox=self.kind, max_turns=turns,
                         max_retries=0, **self.settings)
        if result.status != "ready":
            raise RuntimeError(f"run ended {result.status}: {result.error}")
        return result.answer


class Rlms(Adapter):
    """alexzhang13/rlm (`pip install rlms`, imports as `rlm`): ```repl fences, the answer dict."""

    settings: ClassVar[dict[str, Any]] = {"max_concurrent_subcalls": 64}

    def _environment(self) -> tuple[str, dict[str, Any]]:
        if self.kind == "ipython-subprocess":
            return "ipython", {"kernel_mode": "subprocess"}
        return self.kind, {}

    def step(self, program: str) -> str:
        return f"Running code.\n```repl\n{self.code(program)}\n```"

    def start(self) -> Any:
        from rlm.environments import get_environment

        name, kwargs = self._environment()
        repl = get_environment(name, kwargs)
        repl.execute_code("x = 1")
        return repl

    def execute(self, repl: Any, code: str) -> None:
        repl.execute_code(code)

    def close(self, repl: Any) -> None:
        repl.cleanup()

    def run(self, base_url: str, question: str, context: str, turns: int) -> str:
        from rlm import RLM

        name, kwargs = self._environment()
        model = RLM(backend="openai", backend_kwargs={"model_name": "bench", "base_url": base_url, "api_key": "bench"},
                    environment=name, environment_kwargs=kwargs, max_iterations=turns, **self.settings)
        return str(model.completion(context, root_prompt=question).response)


class Dspy(Adapter):
    """dspy.RLM: its chat-adapter fields around the code, `SUBMIT(...)` to finish."""

    settings: ClassVar[dict[str, Any]] = {"max_llm_calls": 1000}

    def finish(self, expr: str) -> str:
        return f"SUBMIT(answer=str({expr}))"

    def step(self, program: str) -> str:
        return (f"[[ ## reasoning ## ]]\nRunning code.\n\n[[ ## code ## ]]\n```python\n{self.code(program)}\n```\n\n"
                "[[ ## completed ## ]]")

    def _interpreter(self) -> Any:
        if self.kind == "local-interpreter":
            from dspy.primitives.local_interpreter import LocalInterpreter

            return LocalInterpreter
        from dspy.primitives.python_interpreter import PythonInterpreter

        return PythonInterpreter

    def start(self) -> Any:
        repl = self._interpreter()()
        repl.execute("x = 1")
        return repl

    def execute(self, repl: Any, code: str) -> None:
        repl.execute(code)

    def close(self, repl: Any) -> None:
        repl.shutdown()

    def run(self, base_url: str, question: str, context: str, turns: int) -> str:
        import dspy

        lm = dspy.LM("openai/bench", api_base=base_url, api_key="bench", cache=False, num_retries=0)
        with dspy.context(lm=lm):
            module = dspy.RLM("context, question -> answer", max_iters=turns, interpreter_factory=self._interpreter(),
                              **self.settings)
            return str(module(context=context, question=question).answer)


ADAPTERS: dict[str, type[Adapter]] = {"ours": Ours, "rlms": Rlms, "dspy": Dspy}

# litellm (under dspy) fetches its model price list from the internet at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
