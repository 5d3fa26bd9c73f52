"""memstream: streaming video question answering whose video memory is a Video-LLM's KV cache.

    import memstream
    engine = memstream.load(model="tiny", expert="tiny")  # or a hub id / local directory; "clip-b32"
    stream = engine.stream(policy="memstream", fps=1.0, tokens_per_frame=64, topk=16)  # policy_names()
    stream.add_video("assets/sample.mp4")
    answer = stream.ask("What is moving?")
    answer.text, answer.ttft_s, answer.trace.selected

Policies are plug-ins (`memstream.policies`, `register_policy`), backbones too (`memstream.backbones`).
Neither gradio nor plotly is imported here: the demo lives in `memstream_demo`.
"""

from .config import StreamConfig
from .engine import Engine, Stream, load
from .errors import (
    ConfigError,
    EmptyMemoryError,
    InputError,
    MemStreamError,
    ModelLoadError,
    VideoError,
    WorkerError,
)
from .policies import (
    HermesConfig,
    MemStreamConfig,
    PolicyConfig,
    RekvConfig,
    policy_names,
    policy_spec,
    register_policy,
)
from .trace import Answer, RetrievalTrace

__all__ = [
    "load", "Engine", "Stream", "StreamConfig", "Answer", "RetrievalTrace",
    "register_policy", "policy_names", "policy_spec", "PolicyConfig", "RekvConfig", "MemStreamConfig", "HermesConfig",
    "MemStreamError", "VideoError", "ConfigError", "ModelLoadError", "EmptyMemoryError", "InputError", "WorkerError",
]
__version__ = "0.2.0"
