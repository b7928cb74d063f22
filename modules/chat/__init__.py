"""Browser chat sessions without any Gradio: conversations, saved histories, and replies through the scheduler."""
from modules.chat.conversation import Conversation, HistoryError, new_id
from modules.chat.history import HistoryEntry, HistoryListing, HistoryStore, atomic_write, check_name, history_store
from modules.chat.session import (
    ChatOptions,
    ChatSession,
    ContextInfo,
    ReplyParams,
    character_card,
    detected_template,
    entry_model,
    measure,
    new_conversation,
    start_reply,
)

__all__ = [
    "ChatOptions",
    "ChatSession",
    "ContextInfo",
    "Conversation",
    "HistoryEntry",
    "HistoryError",
    "HistoryListing",
    "HistoryStore",
    "ReplyParams",
    "atomic_write",
    "character_card",
    "check_name",
    "detected_template",
    "entry_model",
    "history_store",
    "measure",
    "new_conversation",
    "new_id",
    "start_reply",
]
