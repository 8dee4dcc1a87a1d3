"""Hugging Face Jinja2 chat templates, rendered in a sandbox, and chats
turned into token ids without letting message text act as control tokens.

    tmpl = ChatTemplate.from_metadata(meta, tokenizer)        # the file's, or a built-in
    prompt = tmpl.render([{"role": "user", "content": "Hi"}])  # str
    ids = encode_chat(tokenizer, tmpl, messages)              # list[int]
    stop_texts = tmpl.end_of_turn                             # e.g. ("<|im_end|>",)

Templates are untrusted code (CVE-2024-34359: a GGUF's template ran Python
in llama-cpp-python).  They run in Jinja2's ImmutableSandboxedEnvironment,
tightened so that reaching for an internal attribute fails at once instead
of printing nothing, repetition, powers and output size are bounded, and
they only ever see plain copies of the caller's data.
"""
from __future__ import annotations

import json
import re
import traceback
import weakref
from datetime import datetime
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import jinja2
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from ..errors import ChatTemplateError
from ..tokenizer.spm import TT_CONTROL, TT_UNKNOWN
from .builtin_templates import (
    BUILTIN_TEMPLATES,
    END_OF_TURN,
    EOS,
    canonical_name,
    choose_template,
    detect_family,
    special_texts,
)

__all__ = ["ChatTemplate", "encode_chat"]

_MAX_OUTPUT = 32 << 20  # characters: far beyond any context window, far short of exhausting memory
_MAX_REPEAT = 4 << 20  # elements one `*` may build
_MAX_EXPONENT = 4096
# older releases let a template escape the sandbox through str.format (CVE-2024-56326, CVE-2025-27516)
_JINJA_SAFE = tuple(int(x) for x in re.findall(r"\d+", jinja2.__version__)[:3]) >= (3, 1, 6)

# ------------------------------------------------------------------ sandbox


class _GenerationTag(Extension):
    # transformers' `{% generation %}` marks assistant text for training masks:
    # templates using it must parse; rendering keeps the body
    tags = {"generation"}

    def parse(self, parser):
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _check_name(name: object) -> None:
    if not isinstance(name, str) or name.startswith("_"):
        raise SecurityError(f"namespace attribute {name!r} is not allowed")


class _Namespace(Namespace):
    # no underscore names: a template must not plant attributes the sandbox treats as internal
    def __init__(*args: Any, **kwargs: Any) -> None:  # Namespace's signature trick (`self` may be a key)
        for key in dict(*args[1:], **kwargs):
            _check_name(key)
        Namespace.__init__(*args, **kwargs)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_name(name)
        super().__setitem__(name, value)


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(("*", "**"))

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        # The stock sandbox returns an Undefined that fails only when used
        # further, so `{{ x.__class__ }}` would print nothing and carry on; a
        # template that reaches for internals is hostile and must not render.
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__} is not allowed")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > _MAX_EXPONENT \
                and isinstance(left, (int, float)) and abs(left) > 1:
            raise SecurityError(f"power with exponent {right} is too large")
        for seq, n in ((left, right), (right, left)) if operator == "*" else ():
            if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > _MAX_REPEAT:
                raise SecurityError(f"repetition of {len(seq) * n} elements is too large")
        return super().call_binop(context, operator, left, right)


def _raise_exception(message: Any) -> None:
    raise ChatTemplateError(f"chat template: {message}")


def _tojson(value: Any, indent: Any = None, sort_keys: bool = False, ensure_ascii: bool = False,
            separators: Any = None) -> str:
    # transformers' definition: Jinja's own tojson HTML-escapes, which models were never trained on
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


_ENV = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _GenerationTag])
_ENV.filters["tojson"] = _tojson
_ENV.globals.update(raise_exception=_raise_exception, namespace=_Namespace,
                    strftime_now=lambda fmt: datetime.now().strftime(str(fmt)),
                    dict=lambda *args, **kwargs: dict(*args, **kwargs))  # not the class object itself
# what a template can raise while rendering; anything else is our bug and propagates
_RENDER_ERRORS = (TemplateError, TypeError, ValueError, LookupError, ArithmeticError, AttributeError, RecursionError)


def _one_line(text: object, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _template_line(exc: BaseException) -> str:
    # Jinja rewrites tracebacks so that template frames carry the template's line numbers
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == "<template>"]
    return f" (template line {lines[-1]})" if lines else ""

# ------------------------------------------------------------------ messages


def _plain(value: Any, where: str) -> Any:
    """A copy made of dicts, lists and scalars only: templates never see (or
    reach through) the caller's objects."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Mapping):
        bad = next((k for k in value if not isinstance(k, str)), None)
        if bad is not None:
            raise ChatTemplateError(f"{where}: keys must be strings, got {bad!r}")
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ChatTemplateError(f"{where}: values must be strings, numbers, lists or dicts, got {type(value).__name__}")


def _content_text(content: Any, where: str) -> str:
    # OpenAI clients may send a list of parts: its text parts joined by newlines, as llama.cpp does
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, (list, tuple)):
        raise ChatTemplateError(f"{where}: content must be a string or a list of text parts, "
                                f"got {type(content).__name__}")
    for i, part in enumerate(content):
        if not (isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            raise ChatTemplateError(f"{where}.content[{i}]: only text parts ({{'type': 'text', 'text': ...}}) "
                                    f"are supported, got {_one_line(repr(part), 80)}")
    return "\n".join(part["text"] for part in content)


def _normalize(messages: Any) -> List[Dict[str, Any]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ChatTemplateError("messages must be a list of {'role': ..., 'content': ...} mappings")
    out = []
    for n, message in enumerate(messages):
        where = f"messages[{n}]"
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str) or not message["role"]:
            raise ChatTemplateError(f"{where}: a message must be a mapping with a non-empty string 'role'")
        msg = {key: _content_text(value, where) if key == "content" else _plain(value, f"{where}.{key}")
               for key, value in message.items() if key == "content" or value is not None}  # e.g. "tool_calls": null
        msg.setdefault("content", "")
        out.append(msg)
    return out


def _merge_system(messages: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """For templates without a system role: system text goes in front of the
    next user message, a newline apart (llama.cpp's rule), or becomes a user
    message of its own when no user message follows."""
    out: List[Dict[str, Any]] = []
    pending: List[str] = []
    for msg in messages:
        if msg["role"] == "system":
            pending.append(msg["content"])
            continue
        if pending and msg["role"] == "user":
            msg = dict(msg, content="\n".join(pending + [msg["content"]] if msg["content"] else pending))
        elif pending:
            out.append({"role": "user", "content": "\n".join(pending)})
        pending = []
        out.append(msg)
    return out + ([{"role": "user", "content": "\n".join(pending)}] if pending else [])


_USER_NEEDLE, _SYSTEM_NEEDLE = "<User Needle 7f3a>", "<System Needle 7f3a>"

# ------------------------------------------------------------------ template


class ChatTemplate:
    """A chat template ready to render conversations.

    ``source``: the Jinja2 text.  ``name``: the built-in's name, or None.
    ``origin``: "file" (the model file's), "builtin" (asked for by name),
    "vocabulary" (the file has none; chosen from its vocabulary or model
    name), "default" (nothing to go on: chatml, llama.cpp's fallback too) or
    "string" (built from text).  ``family``: e.g. "chatml", "llama-3" (see
    ``detect_family``), None if unrecognised.  ``bos_token``/``eos_token``:
    the texts the template may write.  ``end_of_turn``: texts to stop
    generating on besides the vocabulary's end-of-generation ids.
    """

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "", name: Optional[str] = None):
        if not isinstance(source, str) or not source.strip():
            raise ChatTemplateError("the chat template is empty")
        if not _JINJA_SAFE:
            raise ChatTemplateError(f"jinja2 {jinja2.__version__} has sandbox escapes; "
                                    "chat templates need jinja2 >= 3.1.6")
        builtin = name is not None and BUILTIN_TEMPLATES.get(name) == source
        self.source, self.name, self.origin = source, name if builtin else None, "builtin" if builtin else "string"
        self.bos_token, self.eos_token = str(bos_token), str(eos_token)
        self.family = self.name or detect_family(source)
        try:
            self._compiled = _ENV.from_string(source)
        except TemplateSyntaxError as e:
            raise ChatTemplateError(f"chat template syntax error (line {e.lineno}): {_one_line(e.message)}") from None
        except TemplateError as e:
            raise ChatTemplateError(f"chat template cannot be compiled: {_one_line(e)}") from None
        texts = (self.eos_token if t is EOS else t for t in END_OF_TURN.get(self.family or "", ()))
        self.end_of_turn: Tuple[str, ...] = tuple(dict.fromkeys(t for t in texts if t))
        # our built-ins take string content and place system messages themselves
        self._caps: Optional[Tuple[bool, bool]] = (False, True) if builtin else None

    @classmethod
    def builtin(cls, name: str, tokenizer: Any = None, *, bos_token: Optional[str] = None,
                eos_token: Optional[str] = None) -> "ChatTemplate":
        """A built-in template by name or alias (``BUILTIN_TEMPLATES``); the
        BOS/EOS texts come from ``tokenizer`` unless given."""
        key = canonical_name(name) if isinstance(name, str) else None
        if key is None:
            raise ChatTemplateError(f"unknown chat template {name!r}; built-in templates: "
                                    f"{', '.join(sorted(BUILTIN_TEMPLATES))}")
        bos, eos = special_texts(tokenizer, {})
        return cls(BUILTIN_TEMPLATES[key], bos_token=bos if bos_token is None else bos_token,
                   eos_token=eos if eos_token is None else eos_token, name=key)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], tokenizer: Any = None,
                      name: Optional[str] = None) -> "ChatTemplate":
        """The template for a GGUF model: ``name`` if given (one of the file's
        named templates, ``tokenizer.chat_template.<name>``, or a built-in),
        else the file's ``tokenizer.chat_template``, else the built-in its
        vocabulary or model name points to, else chatml (see ``origin``).
        BOS/EOS texts come from ``tokenizer``, or from the metadata without one."""
        if not isinstance(metadata, Mapping):
            raise ChatTemplateError("GGUF metadata must be a mapping of key -> value")
        bos, eos = special_texts(tokenizer, metadata)
        source, builtin, origin = choose_template(metadata, tokenizer, name)
        if builtin is not None:
            template = cls.builtin(builtin, bos_token=bos, eos_token=eos)
        else:
            template = cls(source or "", bos_token=bos, eos_token=eos)
        template.origin = origin
        return template

    def _capabilities(self) -> Tuple[bool, bool]:
        """(requires_typed_content, supports_system_role), found as llama.cpp
        finds them: by rendering probe conversations."""
        if self._caps is None:
            def probe(*messages: Tuple[str, Any]) -> str:
                try:
                    return self._raw([{"role": r, "content": c} for r, c in messages], False, None, {})
                except ChatTemplateError:
                    return ""

            def typed_text(text: str) -> List[Dict[str, str]]:
                return [{"type": "text", "text": text}]

            typed = _USER_NEEDLE not in probe(("user", _USER_NEEDLE)) \
                and _USER_NEEDLE in probe(("user", typed_text(_USER_NEEDLE)))
            wrap = typed_text if typed else str
            system = _SYSTEM_NEEDLE in probe(("system", wrap(_SYSTEM_NEEDLE)), ("user", wrap(_USER_NEEDLE)))
            self._caps = (typed, system)
        return self._caps

    @property
    def requires_typed_content(self) -> bool:
        """True when the template reads message content only as a list of parts."""
        return self._capabilities()[0]

    @property
    def supports_system_role(self) -> bool:
        """False when the template drops or rejects system messages: render
        then moves their text into the next user message."""
        return self._capabilities()[1]

    def _arguments(self, messages: Any, tools: Any, variables: Mapping[str, Any]) -> Tuple[Any, Any, Dict[str, Any]]:
        msgs = _normalize(messages)
        typed, system = self._capabilities()
        if not system:
            msgs = _merge_system(msgs)
        if typed:
            msgs = [dict(m, content=[{"type": "text", "text": m["content"]}]) for m in msgs]
        return msgs, None if tools is None else _plain(tools, "tools"), {k: _plain(v, k) for k, v in variables.items()}

    def _raw(self, messages: Any, add_generation_prompt: bool, tools: Any, variables: Mapping[str, Any]) -> str:
        context = {"bos_token": self.bos_token, "eos_token": self.eos_token, **variables,
                   "messages": messages, "add_generation_prompt": bool(add_generation_prompt), "tools": tools}
        parts: List[str] = []
        size = 0
        try:
            for chunk in self._compiled.generate(context):
                size += len(chunk)
                if size > _MAX_OUTPUT:
                    raise ChatTemplateError(f"chat template output exceeds {_MAX_OUTPUT} characters")
                parts.append(chunk)
        except ChatTemplateError:
            raise
        except SecurityError as e:
            raise ChatTemplateError(f"chat template attempted an unsafe operation{_template_line(e)}: "
                                    f"{_one_line(e)}") from None
        except _RENDER_ERRORS as e:
            raise ChatTemplateError(f"chat template failed{_template_line(e)}: {type(e).__name__}: "
                                    f"{_one_line(e)}") from None
        return "".join(parts)

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, *,
               tools: Optional[Sequence[Mapping[str, Any]]] = None, **variables: Any) -> str:
        """The prompt text for ``messages`` (mappings with "role" and
        "content"; content a string or a list of {"type": "text", "text": ...}
        parts).  ``tools`` (OpenAI function schemas) and extra ``variables``
        (e.g. ``enable_thinking=False``) are passed to the template."""
        msgs, tools_, variables_ = self._arguments(messages, tools, variables)
        return self._raw(msgs, add_generation_prompt, tools_, variables_)

    def __repr__(self) -> str:
        return f"<ChatTemplate family={self.family!r} origin={self.origin!r} name={self.name!r}>"


# ------------------------------------------------------------------ encoding

_CONTROLS: "weakref.WeakKeyDictionary[Any, List[Tuple[str, int]]]" = weakref.WeakKeyDictionary()


def _controls(tokenizer: Any) -> List[Tuple[str, int]]:
    """The texts only ``parse_special=True`` turns into ids (CONTROL and
    UNKNOWN tokens), in the tokenizer's order: longest first, then lowest id."""
    found = _CONTROLS.get(tokenizer)
    if found is None:
        found = sorted(((t, i) for i, (t, k) in enumerate(zip(tokenizer.tokens, tokenizer.token_types))
                        if k in (TT_CONTROL, TT_UNKNOWN)), key=lambda p: (-len(p[0]), p[1]))
        _CONTROLS[tokenizer] = found
    return found


def _present(controls: List[Tuple[str, int]], text: str) -> List[Tuple[str, int]]:
    seen: Dict[str, bool] = {}  # vocabularies carry thousands of "<unusedN>": test each 4-char prefix once
    out = []
    for t, i in controls:
        if t[:4] not in seen:
            seen[t[:4]] = t[:4] in text
        if seen[t[:4]] and t in text:
            out.append((t, i))
    return out


def _strings(value: Any) -> List[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_strings(v)]]
    return [s for v in value for s in _strings(v)] if isinstance(value, list) else []


def _mark(value: Any, pattern: "re.Pattern[str]", start: str, end: str) -> Any:
    """Every control-token text inside caller strings (keys too), wrapped in
    the two marker characters."""
    if isinstance(value, str):
        return pattern.sub(lambda m: start + m.group(0) + end, value)
    if isinstance(value, dict):
        return {_mark(k, pattern, start, end): _mark(v, pattern, start, end) for k, v in value.items()}
    return [_mark(v, pattern, start, end) for v in value] if isinstance(value, list) else value


def _escape(c: str) -> str:
    return "\\u%04x" % ord(c)  # how tojson(ensure_ascii=True) and repr() write a private-use character


def _pick_markers(texts: Sequence[str]) -> Tuple[str, str]:
    """Two private-use characters found nowhere in the inputs or the template,
    raw or escaped, so that every marker in the output is one of ours."""
    for cp in range(0xE000, 0xF8FF, 2):
        pair = (chr(cp), chr(cp + 1))
        if not any(x in t for t in texts for c in pair for x in (c, _escape(c))):
            return pair
    raise ChatTemplateError("cannot tokenize this conversation safely: it uses every private-use character")


def _segments(text: str, start: str, end: str, controls: List[Tuple[str, int]]) -> List[Tuple[bool, str]]:
    """Rendered text as (protected, text) pieces; protected pieces are the
    control-token texts that came from the caller's strings.  A lone marker
    (the template sliced its partner off) still protects the token text next
    to it, and splits the text so that nothing joins across it."""
    out: List[Tuple[bool, str]] = []
    for k, piece in enumerate(re.split(f"({re.escape(start)}[^{start}{end}]*{re.escape(end)})", text)):
        if k % 2:
            out.append((True, piece[1:-1]))
            continue
        parts = re.split(f"([{start}{end}])", piece)
        for j in range(0, len(parts), 2):
            chunk, head, tail = parts[j], "", ""
            if j and parts[j - 1] == start:
                head = next((t for t, _ in controls if chunk.startswith(t)), "")
            if j + 1 < len(parts) and parts[j + 1] == end:
                tail = next((t for t, _ in controls if chunk[len(head):].endswith(t)), "")
            out += [(True, head), (False, chunk[len(head):len(chunk) - len(tail)]), (True, tail)]
    return [p for p in out if p[1]]


def encode_chat(tokenizer: Any, template: ChatTemplate, messages: Sequence[Mapping[str, Any]],
                add_generation_prompt: bool = True, *, tools: Optional[Sequence[Mapping[str, Any]]] = None,
                **variables: Any) -> List[int]:
    """Token ids of ``template.render(messages, ...)``.  Control tokens the
    template wrote (``<|im_start|>``, ``<end_of_turn>``, BOS...) become their
    ids; the same texts inside messages, tools or variables stay plain text,
    so a user typing ``<|im_end|>`` cannot end the turn.

    BOS goes first when the vocabulary asks for one (``add_bos``) and the
    template did not write it; no EOS is added.  When the caller's strings
    hold no control-token text, the ids are exactly
    ``tokenizer.encode(rendered, parse_special=True)`` with that BOS rule:
    what llama.cpp makes of a rendered chat."""
    msgs, tools_, vars_ = template._arguments(messages, tools, variables)
    controls = _controls(tokenizer)
    inputs = _strings([msgs, tools_, vars_])
    found = _present(controls, "\0".join(inputs))
    start = end = ""
    if found:
        start, end = _pick_markers(inputs + [template.source, template.bos_token, template.eos_token])
        pattern = re.compile("|".join(re.escape(t) for t, _ in found))  # longest first: the longest match wins
        msgs, tools_, vars_ = (_mark(x, pattern, start, end) for x in (msgs, tools_, vars_))
    text = template._raw(msgs, add_generation_prompt, tools_, vars_)
    if found:
        text = text.replace(_escape(start), start).replace(_escape(end), end)
    present = _present(controls, text)
    frags: List[Union[int, Tuple[bool, str]]] = list(_segments(text, start, end, present) if found else [(False, text)])
    # Split the template's text on control tokens as Tokenizer.encode does
    # (longest token first over the whole text); protected pieces stay whole.
    for t, i in present:
        new: List[Union[int, Tuple[bool, str]]] = []
        for f in frags:
            if isinstance(f, int) or f[0] or t not in f[1]:
                new.append(f)
                continue
            for k, part in enumerate(f[1].split(t)):
                new += ([i] if k else []) + ([(False, part)] if part else [])
        frags = new
    ids: List[int] = []
    run: List[str] = []
    unk = getattr(tokenizer, "unk_id", None)
    for f in frags + [-1]:
        if isinstance(f, tuple):
            run.append(f[1])
            continue
        if run:  # the text between two control tokens is encoded in one piece, as llama.cpp does
            run_ids = tokenizer.encode("".join(run), add_bos=False, parse_special=False, add_eos=False)
            if any(j != unk and tokenizer.is_control(j) for j in run_ids):
                raise ChatTemplateError("the tokenizer made a control token out of plain text; refusing to encode")
            ids += run_ids
            run = []
        if f != -1:
            ids.append(f)
    if tokenizer.add_bos and tokenizer.bos_id is not None and ids[:1] != [tokenizer.bos_id]:
        ids.insert(0, tokenizer.bos_id)
    return ids
