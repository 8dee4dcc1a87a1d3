"""Tokenizers matching llama.cpp's ids: SentencePiece-style (`spm`) and
byte-level BPE (`bpe`) vocabularies from GGUF metadata, `.model` and llama2.c
files, UTF-8-safe streaming, and (`to_gguf`) vocabularies of Hugging Face and
SentencePiece files written as GGUF `tokenizer.*` metadata."""
from .tokenizer import StreamDecoder, Tokenizer

__all__ = ["StreamDecoder", "Tokenizer"]
