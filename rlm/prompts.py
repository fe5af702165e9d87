"""Every text the root model reads: the system prompt, REPL feedback, nudges; and the code
extraction that reads its replies (fenced blocks or `python` tool calls)."""

from __future__ import annotations

import inspect
import json
import re
import string
from typing import Any

from sandbox import ExecutionResult

from .config import RLMConfig
from .errors import ConfigError

#: The function tool offered in `code_format="tool"`, as verifiers' RLMEnv offers it.
PYTHON_TOOL = {
    "type": "function",
    "function": {
        "name": "python",
        "description": "Run Python code in the persistent REPL and return its output.",
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "Python source to execute."}},
            "required": ["code"],
        },
    },
}

_FENCE = re.compile(r"```(?:python|py)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)

_PROTOCOL = {
    "fenced": (
        "To run code, put it in one or more ```python fenced blocks in your reply. Every block "
        "of a reply runs, in order, and you then see the combined output."
    ),
    "tool": (
        "To run code, call the `python` tool with the code as its `code` argument. Each call "
        "returns that execution's output."
    ),
}

SYSTEM_TEMPLATE = """\
You are answering a question with the help of a persistent Python REPL (a Jupyter kernel). \
The input data is NOT in this conversation: it is loaded in the REPL as the variable `context`. \
Explore it with code, delegate reading to sub-LLMs, and build your answer in the REPL.

## The REPL
{protocol} Variables, imports and functions persist across turns. Output is truncated to \
{max_output_chars} characters, so print summaries and slices rather than whole data. Each \
execution may run for at most {exec_timeout:g} seconds. The sandbox has no network.

## `context`
{context_description}
{sections}
## Sub-LLMs: `llm_batch(prompts: list[str]) -> list[str]`
{llm_batch_text}
{functions}
## The answer
The REPL holds `answer = {{"content": "", "ready": False}}`. `answer["content"]` is your \
scratchpad: write, rewrite or delete it over as many turns as you like. When it holds your \
final answer, set `answer["ready"] = True`: that ends the run and `answer["content"]` is \
returned, exactly as it is. Put only the answer itself in it.

## Limits
{limits}

## Installed packages
{packages}
{pip_text}{tips}"""

_LLM_BATCH = {
    0: "Disabled in this run: solve the task with code alone.",
    1: (
        "Sends every prompt to a sub-LLM in parallel and returns the completions in the same "
        "order. Sub-LLMs see only the prompt you write, so put the relevant slice of `context` "
        "and a precise instruction in each one. A prompt that fails comes back as a string "
        "starting with \"[error]\". Batch many prompts in one call rather than calling in a loop.\n"
        "A prompt longer than the sub-LLM's context window fails with an error naming both sizes. "
        "`chunk_text(text, max_tokens) -> list[str]` splits a text into consecutive pieces of at most "
        "`max_tokens` of the sub-LLM's tokens, cut at paragraphs, lines or words (''.join(pieces) == "
        "text): leave room in `max_tokens` for your instruction and the reply."
    ),
}
_NESTED = (
    " Each prompt is handled by a sub-RLM with a REPL of its own (recursion depth left: {depth}); "
    "pass the data it needs inside the prompt."
)


def system_prompt(config: RLMConfig, context_description: str, packages: list[str], budget_left: str = "") -> str:
    llm_batch_text = _LLM_BATCH[min(config.max_depth, 1)]
    if config.max_depth > 1:
        llm_batch_text += _NESTED.format(depth=config.max_depth - 1)
    limits = [f"- {config.max_turns} turns in all; each of your replies is one turn.",
              f"- `answer[\"content\"]` holds at most {config.max_answer_chars:,} characters; the rest is cut."]
    if config.max_depth:
        limits.append(f"- Each sub-LLM prompt holds at most {config.max_prompt_chars:,} characters.")
    if budget_left:
        limits.append(f"- Budget: {budget_left}; a sub-LLM prompt past it fails.")
    if config.max_root_tokens is not None:
        limits.append(f"- {config.max_root_tokens:,} tokens for this conversation.")
    tips = f"\n## Tips\n{config.tips.strip()}\n" if config.tips else ""
    sections = "".join(f"\n## {title}\n{text.strip()}\n" for title, text in config.prompt_sections.items())
    notes = "".join(f"\n- `{name}`: {note.strip()}" for name, note in config.package_notes.items())
    fields = {
        "protocol": _PROTOCOL[config.code_format],
        "max_output_chars": config.max_output_chars,
        "exec_timeout": config.exec_timeout,
        "context_description": context_description,
        "sections": sections,
        "llm_batch_text": llm_batch_text,
        "functions": _functions_text(config),
        "limits": "\n".join(limits),
        "packages": (", ".join(packages) if packages else "(the standard library only)") + notes,
        "pip_text": _pip_text(config.allow_pip),
        "tips": tips,
    }
    return (config.system_prompt or SYSTEM_TEMPLATE).format(**fields)


#: The fields a system prompt template (`RLMConfig.system_prompt`) may use, as `{name}`.
FIELDS = frozenset({"protocol", "max_output_chars", "exec_timeout", "context_description", "sections",
                    "llm_batch_text", "functions", "limits", "packages", "pip_text", "tips"})


def check_template(template: str) -> None:
    """Refuse a template with a field we do not fill, or braces that do not parse."""
    try:
        names = {field.split(".")[0].split("[")[0] for _, field, _, _ in string.Formatter().parse(template)
                 if field is not None}
    except ValueError as exc:
        raise ConfigError(f"system_prompt: {exc} (write literal braces as {{{{ and }}}})") from None
    unknown = sorted(names - FIELDS)
    if unknown:
        raise ConfigError(f"system_prompt uses unknown fields {unknown}; the fields are: {', '.join(sorted(FIELDS))}")
    if "context_description" not in names:
        raise ConfigError("system_prompt must say what the data is: put {context_description} in it")


def _signature(fn: Any) -> inspect.Signature:
    """With string annotations (`from __future__ import annotations`) resolved where they can be."""
    try:
        return inspect.signature(fn, eval_str=True)
    except (NameError, TypeError, SyntaxError):
        return inspect.signature(fn)


def _functions_text(config: RLMConfig) -> str:
    """The user's REPL functions, from their signatures and docstrings."""
    described = [(fn, "runs on the host; its arguments and result travel as JSON")
                 for fn in config.repl_functions] + [(fn, "defined in the REPL") for fn in config.sandbox_functions]
    if not described:
        return ""
    lines = [f"- `{fn.__name__}{_signature(fn)}` ({where}): {inspect.getdoc(fn) or 'no description'}"
             for fn, where in described]
    return "\n## Functions\nThese functions are in the REPL, ready to call:\n" + "\n".join(lines) + "\n"


def _pip_text(allow_pip: bool | list[str]) -> str:
    if not allow_pip:
        return ""
    which = "any package" if allow_pip is True else "these packages: " + ", ".join(allow_pip)
    return (f"`pip_install(['name==version', ...])` installs {which}: the controller downloads the "
            "wheels, the sandbox stays offline.\n")


def extract_code(content: str) -> list[str]:
    """The ```python blocks of a reply, in order."""
    return [block.strip("\n") for block in _FENCE.findall(content) if block.strip()]


def tool_call_code(call: dict[str, Any]) -> str | None:
    """The code of a `python` tool call, or None when the call is not one we can run."""
    if call["function"]["name"] != "python":
        return None
    try:
        arguments = json.loads(call["function"]["arguments"] or "{}")
    except json.JSONDecodeError:
        return None
    code = arguments.get("code") if isinstance(arguments, dict) else None
    return code if isinstance(code, str) else None


def turns_left_note(turn: int, max_turns: int, budget_left: str = "") -> str:
    """What is left after this turn: turns, and the call tree's budget when limits are set."""
    left = max_turns - turn
    if left <= 0:
        return ""
    budget = f"; {budget_left}" if budget_left else ""
    if left == 1:
        return f"[1 turn left{budget}: set answer[\"ready\"] = True in your next reply.]"
    return f"[{left} turns left{budget}]"


NO_CODE_NUDGE = (
    "Your reply ran no code. Work in the REPL: {how}. When `answer[\"content\"]` holds the final "
    "answer, set `answer[\"ready\"] = True`."
)
NOT_RUN = "not run, because an earlier block failed or finished the answer"
BAD_TOOL_CALL = "error: call the `python` tool with a JSON object {\"code\": \"...\"}."
BUDGET_NOTE = "[The sub-LLM budget is spent: finish now with what you have and set answer[\"ready\"] = True.]"
ANSWER_CUT = (
    "[`answer[\"content\"]` has {length:,} characters, over the limit of {limit:,}: only the first "
    "{limit:,} are kept. Shorten it.]"
)
STATE_UNREADABLE = "[The REPL's `answer` could not be read; your last content was kept.]"
ANSWER_NOT_DICT = (
    "[`answer` is no longer a dict (it is a {kind}); it was reset to "
    "{{\"content\": <your last content>, \"ready\": False}}.]"
)


def nudge(config: RLMConfig) -> str:
    how = "put code in a ```python block" if config.code_format == "fenced" else "call the `python` tool"
    return NO_CODE_NUDGE.format(how=how)


def format_execution(result: ExecutionResult | None, crashed: BaseException | None,
                     config: RLMConfig) -> tuple[str, int]:
    """The REPL feedback for one execution (`result`, None when the kernel died of `crashed`),
    cut to `max_output_chars` with a visible note. Returns the text and the characters cut."""
    parts = [result.stdout, result.stderr, result.error or ""] if result is not None else []
    text = "".join(p if p.endswith("\n") or not p else p + "\n" for p in parts).rstrip("\n")
    cut = result.chars_cut if result is not None else 0
    limit = config.max_output_chars
    if len(text) > limit:
        half = limit // 2
        cut += len(text) - 2 * half
        text = f"{text[:half]}\n[... {len(text) - 2 * half:,} characters cut ...]\n{text[-half:]}"
    notes = []
    if cut:
        notes.append(f"[output truncated: {cut:,} characters cut; print less]")
    if result is not None and result.timed_out:
        notes.append(f"[execution timed out after {config.exec_timeout:g}s and was interrupted]")
    if crashed is not None or (result is not None and result.restarted):
        cause = (f"the kernel died ({str(crashed) or type(crashed).__name__})" if crashed is not None
                 else "the kernel did not stop after the interrupt")
        notes.append(
            f"[{cause}: it was restarted and all REPL state was lost. `context`, `llm_batch` and "
            "`answer` (with its last content) were restored; re-create your other variables.]"
        )
    body = text if text.strip() else "(no output)"
    return "\n".join([body, *notes]), cut
