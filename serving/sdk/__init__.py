"""Tide's Python SDK: typed calls to served models, over HTTP (`TideClient`, `AsyncTideClient`) or, on the
cluster, through Serve handles (`get_model`). Both return the `openai` package's types (`ChatCompletion`,
`ChatCompletionChunk`, `Completion`: what vLLM's layer in the replica answers) and raise the typed errors below.
"""

from ..errors import TideError
from .errors import (BadRequest, ConnectionFailed, ModelNotFound, RateLimited, RequestTimeout, ServerError,
                     TideAPIError, Unavailable)
from .handle import ModelHandle, connect, get_model
from .http import AsyncTideClient, TideClient

__all__ = ["AsyncTideClient", "BadRequest", "ConnectionFailed", "ModelHandle", "ModelNotFound", "RateLimited",
           "RequestTimeout", "ServerError", "TideAPIError", "TideClient", "TideError", "Unavailable", "connect", "get_model"]
