"""The chat boundary every step goes through: a conversation to tokens and answer labels, a prompt to tokens,
the ids that end an answer. The model's own chat template decides all of it (peftbench.chat_format); the
format is read once per tokenizer and kept on it."""
from peftbench.chat_format import IGNORE_INDEX, ChatFormat, split_prompt_reference  # noqa: F401

_FORMAT = "_peftbench_chat_format"


def format_of(tokenizer) -> ChatFormat:
    fmt = getattr(tokenizer, _FORMAT, None)
    if fmt is None or fmt.template != tokenizer.chat_template:
        fmt = ChatFormat(tokenizer)
        setattr(tokenizer, _FORMAT, fmt)
    return fmt


def encode_chat(tokenizer, messages):
    """Token ids of a whole conversation and labels that are IGNORE_INDEX everywhere but the assistant's
    answers (each through its end-of-turn token, so the model learns to stop)."""
    return format_of(tokenizer).encode_chat(messages)


def encode_chats(tokenizer, conversations):
    """encode_chat of each conversation, tokenized in one batch (on all the CPU's cores)."""
    return format_of(tokenizer).encode_chats(conversations)


def encode_prompt(tokenizer, messages):
    """Token ids of the conversation so far, ending where the model's answer starts."""
    return format_of(tokenizer).encode_prompt(messages)


def encode_prompts(tokenizer, prompts):
    """encode_prompt of each, tokenized in one batch."""
    return format_of(tokenizer).encode_prompts(prompts)


def end_of_turn_id(tokenizer) -> int:
    return format_of(tokenizer).end_of_turn_id


def stop_ids(tokenizer):
    return format_of(tokenizer).stop_ids
