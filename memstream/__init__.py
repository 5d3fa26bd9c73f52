"""memstream: streaming video question answering whose video memory is a Video-LLM's KV cache.

    import memstream
    engine = memstream.load(model="tiny", expert="tiny")  # or a hub id / local directory; "clip-b32"
    stream = engine.stream(policy="memstream", fps=1.0, tokens_per_frame=64, topk=16)  # see POLICIES
    stream.add_video("assets/sample.mp4")
    answer = stream.ask("What is moving?")
    answer.text, answer.ttft_s, answer.trace.selected
"""

from .config import StreamConfig
from .engine import Engine, Stream, load
from .errors import ConfigError, EmptyMemoryError, InputError, MemStreamError, ModelLoadError, VideoError
from .hermes import HermesConfig
from .memory import POLICIES
from .trace import Answer, RetrievalTrace

__all__ = [
    "load", "Engine", "Stream", "StreamConfig", "HermesConfig", "POLICIES", "Answer", "RetrievalTrace",
    "MemStreamError", "VideoError", "ConfigError", "ModelLoadError", "EmptyMemoryError", "InputError",
]
__version__ = "0.1.0"
