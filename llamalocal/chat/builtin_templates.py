"""Built-in chat templates (for model files that carry none) and template
family detection.

Each built-in is Jinja2 source rendered by the same sandbox as a file's own
template, so one code path serves both.  The formats follow the models'
published templates; where a model's own template would reject a
conversation (a system message, two user turns in a row) the built-in renders
it the way llama.cpp's built-in does instead of failing:

* ``chatml``  - OpenHermes/Qwen ``<|im_start|>role\\n...<|im_end|>\\n``.
* ``llama-2`` - Meta's Llama-2-chat template: ``<s>[INST] <<SYS>>\\n...\\n<</SYS>>\\n\\n
  user [/INST] answer </s>``, contents stripped.  (llama.cpp's ``llama2``
  name means a different, Mistral-like layout: that is our ``mistral``.)
* ``llama-3`` - Meta-Llama-3-Instruct's template, contents trimmed.
* ``mistral`` - Mistral-7B-Instruct-v0.1/v0.2's template, with system text
  put in front of the next user turn followed by a newline, as llama.cpp does.
* ``gemma``   - Gemma 3's template (``user``/``model`` turns, system text in
  front of the first user turn followed by a blank line).
* ``alpaca``  - Stanford Alpaca / alpaca-lora's ``### Instruction:`` /
  ``### Response:`` prompt; the Alpaca preamble stands in for a system message.
* ``vicuna``  - Vicuna v1.1 as llama.cpp writes it (``USER: ...\\nASSISTANT:``).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

__all__ = ["BUILTIN_TEMPLATES", "ALIASES", "EOS", "END_OF_TURN", "canonical_name", "choose_template",
           "detect_family", "family_from_vocabulary", "special_texts"]

_ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                    "Write a response that appropriately completes the request.")

# One line per construct; the `-` whitespace control keeps the output free of
# the layout of this source.
BUILTIN_TEMPLATES: Dict[str, str] = {
    "chatml": (
        "{%- for message in messages -%}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    ),
    "llama-2": (
        "{%- set ns = namespace(system=none) -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}"
        "{%- set ns.system = (ns.system + '\\n\\n' if ns.system is not none else '') + message['content'] -%}"
        "{%- elif message['role'] == 'user' -%}"
        "{%- set content = message['content'] -%}"
        "{%- if ns.system is not none -%}"
        "{%- set content = '<<SYS>>\\n' + ns.system + '\\n<</SYS>>\\n\\n' + content -%}"
        "{%- set ns.system = none -%}"
        "{%- endif -%}"
        "{{ bos_token + '[INST] ' + content | trim + ' [/INST]' }}"
        "{%- elif message['role'] == 'assistant' -%}"
        "{{ ' ' + message['content'] | trim + ' ' + eos_token }}"
        "{%- endif -%}"
        "{%- endfor -%}"
    ),
    "llama-3": (
        "{%- for message in messages -%}"
        "{%- set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
        " + message['content'] | trim + '<|eot_id|>' -%}"
        "{%- if loop.first -%}{%- set content = bos_token + content -%}{%- endif -%}"
        "{{ content }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}"
    ),
    "mistral": (
        "{{ bos_token }}"
        "{%- set ns = namespace(system='') -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}"
        "{%- set ns.system = ns.system + message['content'] + '\\n' -%}"
        "{%- elif message['role'] == 'user' -%}"
        "{{ '[INST] ' + ns.system + message['content'] + ' [/INST]' }}"
        "{%- set ns.system = '' -%}"
        "{%- elif message['role'] == 'assistant' -%}"
        "{{ message['content'] + eos_token }}"
        "{%- endif -%}"
        "{%- endfor -%}"
    ),
    "gemma": (
        "{{ bos_token }}"
        "{%- set ns = namespace(system='') -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}"
        "{%- set ns.system = ns.system + message['content'] + '\\n\\n' -%}"
        "{%- else -%}"
        "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
        "{{ '<start_of_turn>' + role + '\\n' }}"
        "{%- if role != 'model' -%}{{ ns.system }}{%- set ns.system = '' -%}{%- endif -%}"
        "{{ message['content'] | trim + '<end_of_turn>\\n' }}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
    ),
    "alpaca": (
        "{%- set ns = namespace(system='') -%}"
        "{%- for message in messages if message['role'] == 'system' -%}"
        "{%- set ns.system = ns.system + ('\\n\\n' if ns.system else '') + message['content'] -%}"
        "{%- endfor -%}"
        "{{ (ns.system if ns.system else '" + _ALPACA_PREAMBLE + "') + '\\n\\n' }}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}"
        "{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
        "{%- elif message['role'] == 'assistant' -%}"
        "{{ '### Response:\\n' + message['content'] + '\\n\\n' }}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '### Response:\\n' }}{%- endif -%}"
    ),
    "vicuna": (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}{{ message['content'] + '\\n\\n' }}"
        "{%- elif message['role'] == 'user' -%}{{ 'USER: ' + message['content'] + '\\n' }}"
        "{%- elif message['role'] == 'assistant' -%}{{ 'ASSISTANT: ' + message['content'] + eos_token + '\\n' }}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
    ),
}

# Other spellings people use (llama.cpp's names, llama-cpp-python's, ollama's).
ALIASES: Dict[str, str] = {
    "llama2": "llama-2", "llama-2-chat": "llama-2", "llama3": "llama-3", "llama-3-instruct": "llama-3",
    "mistral-instruct": "mistral", "mistral-v1": "mistral", "gemma3": "gemma", "gemma-3": "gemma",
    "vicuna-1.1": "vicuna", "im_start": "chatml",
}

EOS = object()  # stands for the template's eos_token text in END_OF_TURN

# Text that ends an assistant turn, per family: generation stops on these
# besides the vocabulary's end-of-generation ids, which matters when the
# vocabulary lacks the family's markers (chatml on a Llama vocabulary) or the
# model writes them out as plain text.
END_OF_TURN: Dict[str, Tuple[object, ...]] = {
    "chatml": ("<|im_end|>",), "phi-4": ("<|im_end|>",), "smolvlm": ("<end_of_utterance>",),
    "llama-2": (EOS,), "mistral": (EOS,), "llama-3": ("<|eot_id|>", "<|eom_id|>"), "llama-4": ("<|eot|>",),
    "gemma": ("<end_of_turn>",), "alpaca": (EOS, "### Instruction:"), "vicuna": (EOS, "USER:"),
    "phi-3": ("<|end|>",), "falcon-3": ("<|user|>",), "zephyr": ("<|endoftext|>",), "monarch": (EOS,),
    "orion": (EOS,), "openchat": ("<|end_of_turn|>",), "deepseek": ("<|EOT|>",),
    "deepseek-2": ("<\uff5cend\u2581of\u2581sentence\uff5c>",),
    "deepseek-3": ("<\uff5cend\u2581of\u2581sentence\uff5c>",),
    "command-r": ("<|END_OF_TURN_TOKEN|>",), "chatglm-3": ("<|user|>", "<|observation|>"),
    "chatglm-4": ("<|user|>", "<|observation|>"), "glm-edge": ("<|user|>",), "minicpm": ("<\u7528\u6237>",),
    "exaone": ("[|endofturn|]",), "granite": ("<|end_of_text|>",), "megrez": ("<|turn_end|>",),
}


def canonical_name(name: str) -> Optional[str]:
    """The built-in template a name (or alias) stands for, or None."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    return key if key in BUILTIN_TEMPLATES else None


# (family, test) in order: the first match wins.  Markers and order are
# llama.cpp's (llm_chat_detect_template), so a template it recognises gets the
# same family here, except that its Mistral and Llama-2 variants fold into
# two families (their turns end alike) and "alpaca" is ours.
_RULES: Tuple[Tuple[str, Callable[[str], bool]], ...] = (
    ("phi-4", lambda t: "<|im_start|>" in t and "<|im_sep|>" in t),
    ("smolvlm", lambda t: "<|im_start|>" in t and "<end_of_utterance>" in t),
    ("chatml", lambda t: "<|im_start|>" in t),
    ("llama-2", lambda t: (t.startswith("mistral") or "[INST]" in t) and "<<SYS>>" in t),
    ("mistral", lambda t: t.startswith("mistral") or "[INST]" in t),
    ("phi-3", lambda t: "<|assistant|>" in t and "<|end|>" in t),
    ("chatglm-4", lambda t: "[gMASK]<sop>" in t),
    ("falcon-3", lambda t: "<|assistant|>" in t and "<|user|>" in t and "</s>" in t),
    ("glm-edge", lambda t: "<|assistant|>" in t and "<|user|>" in t),
    ("zephyr", lambda t: "<|user|>" in t and "<|endoftext|>" in t),
    ("monarch", lambda t: "bos_token + message['role']" in t),
    ("gemma", lambda t: "<start_of_turn>" in t),
    ("orion", lambda t: "'\\n\\nAssistant: ' + eos_token" in t),
    ("openchat", lambda t: "GPT4 Correct " in t),
    ("vicuna", lambda t: "USER: " in t and "ASSISTANT: " in t),
    ("deepseek", lambda t: "### Instruction:" in t and "<|EOT|>" in t),
    ("alpaca", lambda t: "### Instruction:" in t and "### Response:" in t),
    ("command-r", lambda t: "<|START_OF_TURN_TOKEN|>" in t and "<|USER_TOKEN|>" in t),
    ("llama-3", lambda t: "<|start_header_id|>" in t and "<|end_header_id|>" in t),
    ("chatglm-3", lambda t: "[gMASK]sop" in t),
    ("minicpm", lambda t: "<\u7528\u6237>" in t),
    ("deepseek-2", lambda t: "'Assistant: ' + message['content'] + eos_token" in t),
    ("deepseek-3", lambda t: "<\uff5cAssistant\uff5c>" in t and "<\uff5cUser\uff5c>" in t),
    ("exaone", lambda t: "[|system|]" in t and "[|assistant|]" in t and "[|endofturn|]" in t),
    ("granite", lambda t: "<|start_of_role|>" in t),
    ("megrez", lambda t: "<|role_start|>" in t),
    ("llama-4", lambda t: "<|header_start|>" in t and "<|header_end|>" in t),
)


def detect_family(template: str) -> Optional[str]:
    """Which family a chat template (Jinja source or a built-in name) belongs
    to, e.g. "chatml", "llama-3", "gemma"; None when it is not recognised."""
    if not isinstance(template, str):
        return None
    named = canonical_name(template)
    if named is not None:
        return named
    for family, test in _RULES:
        if test(template):
            return family
    return None


# Vocabulary markers, for files with no template: the tokens a family's
# format is built from only exist in vocabularies trained for it.
_VOCAB_MARKERS = (("<|im_start|>", "chatml"), ("<|start_header_id|>", "llama-3"),
                  ("<start_of_turn>", "gemma"), ("[INST]", "mistral"))
# Hints in general.name / general.basename for vocabularies that carry no
# markers (Llama 2 and its fine-tunes share the plain 32000-token vocabulary).
_NAME_HINTS = (("vicuna", "vicuna"), ("alpaca", "alpaca"), ("llama-2", "llama-2"), ("llama2", "llama-2"),
               ("mistral", "mistral"), ("mixtral", "mistral"))


def _text(value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def family_from_vocabulary(has_piece: Callable[[str], bool], metadata: Mapping[str, Any]) -> Optional[str]:
    """The built-in a model with no ``tokenizer.chat_template`` most likely
    wants: from marker tokens in its vocabulary (``has_piece`` tells whether
    a token text exists), then from the model's name; None if nothing fits."""
    for piece, family in _VOCAB_MARKERS:
        if has_piece(piece):
            return family
    name = " ".join(_text(metadata.get(k)).lower() for k in ("general.name", "general.basename", "general.finetune"))
    return next((family for hint, family in _NAME_HINTS if hint in name), None)


def choose_template(metadata: Mapping[str, Any], tokenizer: Any = None,
                    name: Optional[str] = None) -> Tuple[Optional[str], Optional[str], str]:
    """(Jinja source, built-in name, origin) for a GGUF model: ``name`` if
    given (one of the file's ``tokenizer.chat_template.<name>``, else a
    built-in), else the file's ``tokenizer.chat_template`` (origin "file"),
    else the built-in the vocabulary or model name points to ("vocabulary"),
    else chatml ("default", llama.cpp's fallback too)."""
    source = _text(metadata.get("tokenizer.chat_template" + ("" if name is None else f".{name}")))
    if source.strip():
        return source, None, "file"
    if name is not None:
        return None, name, "builtin"
    if tokenizer is not None:
        def has_piece(piece: str) -> bool:
            return tokenizer.piece_to_id(piece) is not None
    else:
        has_piece = {_text(t) for t in metadata.get("tokenizer.ggml.tokens") or ()}.__contains__
    family = family_from_vocabulary(has_piece, metadata)
    return None, family or "chatml", "vocabulary" if family else "default"


def special_texts(tokenizer: Any, metadata: Mapping[str, Any]) -> Tuple[str, str]:
    """BOS and EOS as the text a template writes: the vocabulary's pieces,
    from ``tokenizer`` or else from the metadata's token list."""
    if tokenizer is not None:
        pieces = [None if i is None else tokenizer.id_to_piece(i) for i in (tokenizer.bos_id, tokenizer.eos_id)]
    else:
        tokens = metadata.get("tokenizer.ggml.tokens") or ()
        ids = [metadata.get(f"tokenizer.ggml.{which}_token_id") for which in ("bos", "eos")]
        pieces = [tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None for i in ids]
    return _text(pieces[0]), _text(pieces[1])
