"""Token counts as each model's own tokenizer makes them: Hugging Face tokenizers and chat templates
(``model``, ``templates``), the counting rules of OpenAI requests (``counting``), tokenizers rebuilt from GGUF
files (``gguf_import``) and the cache of tokenizers fetched from billing's model registry (``cache``)."""

from libs.tokens.cache import RegisteredTokenizers, TokenizerFetchError, TokenizerLru, nats_requester
from libs.tokens.counting import (
    ChoiceText,
    count_chat_prompt,
    count_completion,
    count_embedding_input,
    count_text_prompt,
    render_chat_prompt,
    template_messages,
)
from libs.tokens.model import ModelTokenizer, TokenizerFiles, TokenizerFilesError, load_model_tokenizer
from libs.tokens.templates import ChatTemplateError, UnsafeChatTemplate

__all__ = [
    "ChatTemplateError",
    "ChoiceText",
    "ModelTokenizer",
    "RegisteredTokenizers",
    "TokenizerFetchError",
    "TokenizerFiles",
    "TokenizerFilesError",
    "TokenizerLru",
    "UnsafeChatTemplate",
    "count_chat_prompt",
    "count_completion",
    "count_embedding_input",
    "count_text_prompt",
    "load_model_tokenizer",
    "nats_requester",
    "render_chat_prompt",
    "template_messages",
]
