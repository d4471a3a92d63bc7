"""Chat templates: a conversation as the text a chat model reads, rendered exactly as transformers renders it.

A template is Jinja source, as in a Hugging Face ``tokenizer_config.json``'s ``chat_template``. It is rendered in
Jinja2's ``ImmutableSandboxedEnvironment`` with transformers' settings (``trim_blocks``, ``lstrip_blocks``, the
loop controls, its ``tojson``, ``raise_exception``, ``strftime_now``, ``dict``, ``namespace`` and the
``{% generation %}`` tag; transformers' utils/chat_template_utils.py), with the messages, ``add_generation_prompt``
and the tokenizer's special-token strings (``bos_token``, ``eos_token`` ...) as variables. A template that reaches
outside the sandbox (``__class__``, ``mro`` ...) is refused; nothing in a template can run code of its own.

lmkit's own models use ChatML (``DEFAULT_TEMPLATE``: ``<|im_start|>role\\ncontent<|im_end|>\\n``, the format of
Qwen and of OpenAI's chat markup), its two tokens added to lmkit's tokenizer (``lmkit.tokenizer``), its
assistant turns marked with ``{% generation %}`` so that transformers' ``return_assistant_tokens_mask`` finds
them in the exported model too. The assistant's text in a rendering (``assistant_spans``) comes from those tags
when a template has them, else from rendering prefixes of the conversation, as TRL and axolotl do: the reply to
turn i is what ``messages[:i + 1]`` adds to ``messages[:i]`` with the generation prompt.

Jinja2 is the ``lmkit[chat]`` extra.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

from lmkit.errors import UserError

EXTRA = "pip install 'lmkit[chat]'"
MIN_JINJA = (3, 1, 6)  # older Jinja2 versions have known sandbox escapes (transformers refuses them too)

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CHAT_TOKENS = (IM_START, IM_END)  # the tokens lmkit adds to its tokenizer for DEFAULT_TEMPLATE
DEFAULT_TEMPLATE = (
    "{%- for message in messages -%}\n"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}\n"
    "{%- if message['role'] == 'assistant' -%}\n"
    "{% generation %}{{- message['content'] + '<|im_end|>' -}}{% endgeneration %}{{- '\\n' -}}\n"
    "{%- else -%}\n"
    "{{- message['content'] + '<|im_end|>' + '\\n' -}}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "{{- '<|im_start|>assistant\\n' -}}\n"
    "{%- endif -%}\n"
)
ROLES = ("system", "user", "assistant")
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass(frozen=True)
class ChatFormat:
    """How a chat model reads a conversation: model.json's "chat" (lmkit.checkpoint validates it)."""

    template: str                                  # Jinja source
    variables: dict[str, str] = field(default_factory=dict)  # what else the template reads: bos_token, eos_token ...
    system: str | None = None                      # the system turn a conversation without one starts with
    end_of_turn: int | None = None                 # the token that ends an assistant turn (also a stop id)

    def to_dict(self) -> dict[str, Any]:
        return {"template": self.template, "variables": dict(self.variables), "system": self.system,
                "end_of_turn": self.end_of_turn}

    @classmethod
    def from_dict(cls, values: Any) -> ChatFormat:
        """model.json's "chat"; ValueError (said by the checkpoint reader) when it is malformed."""
        if not isinstance(values, dict) or not isinstance(values.get("template"), str) or not values["template"]:
            raise ValueError("'chat' needs a non-empty 'template' string")
        variables = values.get("variables") or {}
        if not isinstance(variables, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                      for k, v in variables.items()):
            raise ValueError("'chat' 'variables' must map names to strings")
        system, end = values.get("system"), values.get("end_of_turn")
        if system is not None and not isinstance(system, str):
            raise ValueError("'chat' 'system' must be a string or null")
        if end is not None and (not isinstance(end, int) or end < 0):
            raise ValueError("'chat' 'end_of_turn' must be a token id or null")
        return cls(values["template"], dict(variables), system, end)

    def with_system(self, messages: list[dict[str, str]], system: str | None = None) -> list[dict[str, str]]:
        """``messages`` opened by the system turn ``system`` (default: the format's), unless they have one."""
        system = system if system is not None else self.system
        if not system or (messages and messages[0]["role"] == "system"):
            return list(messages)
        return [{"role": "system", "content": system}, *messages]


def _jinja():
    try:
        import jinja2
    except ImportError:
        raise UserError(f"chat templates need jinja2: {EXTRA}") from None
    version = tuple(int(part) for part in re.findall(r"\d+", jinja2.__version__)[:3])
    if version < MIN_JINJA:
        raise UserError(f"chat templates need jinja2 >= {'.'.join(map(str, MIN_JINJA))} (found {jinja2.__version__}, "
                        f"which has known sandbox escapes): pip install -U 'lmkit[chat]'")
    return jinja2


@lru_cache(maxsize=16)
def _compiled(source: str):
    """The template compiled in transformers' environment (its _cached_compile_jinja_template, followed
    line by line, so that a rendering is the same string)."""
    jinja2 = _jinja()
    from contextlib import contextmanager
    from contextvars import ContextVar

    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class AssistantTracker(Extension):
        """``{% generation %}...{% endgeneration %}``: where the assistant's text lies in the rendering."""

        tags = {"generation"}

        def __init__(self, environment):
            super().__init__(environment)
            environment.extend(activate_tracker=self.activate_tracker)
            self._tracking = ContextVar("assistant_tracker", default=None)

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_generation_support"), [], [], body).set_lineno(lineno)

        @jinja2.pass_eval_context
        def _generation_support(self, context, caller):
            rendered = caller()
            tracking = self._tracking.get()
            if tracking is not None:
                blocks, spans = tracking
                start = len("".join(blocks))
                spans.append((start, start + len(rendered)))
            return rendered

        @contextmanager
        def activate_tracker(self, blocks, spans):
            token = self._tracking.set((blocks, spans))
            try:
                yield
            finally:
                self._tracking.reset(token)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes HTML characters; transformers' does not
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    class TemplateDict:
        """``dict(...)`` without the attributes of the dict type itself."""

        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        """``namespace(...)`` refusing underscore attributes (a way to CPython's internals)."""

        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"a namespace attribute may not start with '_' ({name!r})")

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[AssistantTracker, loopcontrols])
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    environment.globals["dict"] = TemplateDict()
    environment.globals["namespace"] = TemplateNamespace
    return environment.from_string(source)


def check_template(source: str, where: str) -> None:
    """Refuse a template that is not Jinja, naming ``where`` it comes from."""
    jinja2 = _jinja()
    try:
        _compiled(source)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise UserError(f"{where}: not a valid chat template ({exc.message}, template line {exc.lineno})") from None


def render(chat: ChatFormat, messages: list[dict[str, str]], add_generation_prompt: bool, where: str) -> str:
    """The text of ``messages`` (system, user and assistant turns); with ``add_generation_prompt``, followed by
    what opens the assistant's reply. ``where`` names the conversation in errors."""
    return _render(chat, messages, add_generation_prompt, where)[0]


def _render(chat: ChatFormat, messages: list[dict[str, str]], add_generation_prompt: bool, where: str,
            track: bool = False) -> tuple[str, list[tuple[int, int]]]:
    jinja2 = _jinja()
    check_template(chat.template, f"{where} (chat template)")
    compiled = _compiled(chat.template)
    # The messages as plain dicts of strings: a template sees nothing it could call.
    plain = [{str(k): str(v) for k, v in message.items()} for message in messages]
    variables = {**chat.variables, "messages": plain, "add_generation_prompt": add_generation_prompt}
    blocks: list[str] = []
    spans: list[tuple[int, int]] = []
    try:
        if track:
            with compiled.environment.activate_tracker(blocks, spans):
                for block in compiled.generate(**variables):
                    blocks.append(block)
            return "".join(blocks), spans
        return compiled.render(**variables), []
    except jinja2.exceptions.SecurityError as exc:
        raise UserError(f"{where}: the chat template tried to reach outside its sandbox ({exc}); refused") from None
    except jinja2.exceptions.TemplateError as exc:  # raise_exception(...) in the template, an undefined name ...
        raise UserError(f"{where}: the chat template refused the conversation ({exc})") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise UserError(f"{where}: the chat template failed on the conversation ({type(exc).__name__}: {exc})") \
            from None


def assistant_spans(chat: ChatFormat, messages: list[dict[str, str]], where: str
                    ) -> tuple[str, list[tuple[int, int]]]:
    """The rendering of a whole conversation and the character spans of its assistant turns, each with what
    closes it (the end-of-turn token): the text a model is trained to write."""
    if _GENERATION_TAG.search(chat.template):
        text, spans = _render(chat, messages, False, where, track=True)
        if len(spans) != sum(m["role"] == "assistant" for m in messages):
            raise UserError(f"{where}: the chat template's {{% generation %}} tags mark {len(spans)} spans for "
                            f"{sum(m['role'] == 'assistant' for m in messages)} assistant turns")
        return text, spans
    text = render(chat, messages, False, where)
    spans = []
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(chat, messages[:turn], True, where)
        upto = render(chat, messages[:turn + 1], False, where)
        if not (upto.startswith(before) and text.startswith(upto)):
            raise UserError(f"{where}: turn {turn + 1}: the chat template does not render the conversation as its "
                            "turns one after another (an earlier turn changes when a later one is added), so the "
                            "assistant's tokens cannot be told apart; mark them with {% generation %} tags")
        spans.append((len(before), len(upto)))
    return text, spans
