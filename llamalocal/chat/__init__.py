"""Chat templates for `llamalocal chat`, the library API and the server.

    from llamalocal.chat import ChatTemplate, encode_chat

    tmpl = ChatTemplate.from_metadata(gguf.metadata, tokenizer)   # the file's template, or a built-in
    ids = encode_chat(tokenizer, tmpl, messages)                  # prompt ids, user text never special
    stop_ids, stop_texts = tokenizer.eot_ids, tmpl.end_of_turn

``ChatTemplate.builtin(name, tokenizer)`` picks a built-in (``BUILTIN_TEMPLATES``:
chatml, llama-2, llama-3, mistral, gemma, alpaca, vicuna) and
``detect_family(text)`` names the family of any template text.  Every
failure is a ``ChatTemplateError`` (a ``llamalocal.Error`` and ``ValueError``).
"""
from ..errors import ChatTemplateError
from .builtin_templates import BUILTIN_TEMPLATES, detect_family
from .template import ChatTemplate, encode_chat

__all__ = ["BUILTIN_TEMPLATES", "ChatTemplate", "ChatTemplateError", "detect_family", "encode_chat"]
