"""Token samplers: llama.cpp's chain as small pure functions (`samplers`) and
llama2.c's own sampler (`llama2c`)."""
from .llama2c import Llama2cSampler
from .samplers import (
    SamplerConfig,
    TokenLogprob,
    apply_repetition_penalties,
    apply_temperature,
    greedy,
    make_sampler,
    min_p,
    softmax,
    token_logprob,
    top_k,
    top_p,
)

__all__ = ["Llama2cSampler", "SamplerConfig", "apply_repetition_penalties", "apply_temperature", "greedy",
           "make_sampler", "min_p", "softmax", "TokenLogprob", "token_logprob", "top_k", "top_p"]
