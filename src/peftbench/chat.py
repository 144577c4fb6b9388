"""Gemma's chat turn format, written out by hand so every model (with or without a chat template) gets
exactly the same text, and the token-level mask that trains only on the assistant's answers.

    <bos><start_of_turn>user\n{question}<end_of_turn>\n<start_of_turn>model\n{answer}<end_of_turn>\n
"""
IGNORE_INDEX = -100  # label of tokens the loss skips
START, END = "<start_of_turn>", "<end_of_turn>"
GEMMA_ROLE = {"user": "user", "assistant": "model"}


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def end_of_turn_id(tokenizer) -> int:
    return tokenizer.convert_tokens_to_ids(END)


def encode_chat(tokenizer, messages):
    """Token ids of a whole conversation and labels that are -100 everywhere but the assistant's answers
    (each answer's text and its <end_of_turn>, so the model learns to stop)."""
    input_ids, labels = [tokenizer.bos_token_id], [IGNORE_INDEX]
    for message in messages:
        role = GEMMA_ROLE[message["role"]]
        header = _ids(tokenizer, f"{START}{role}\n")
        body = _ids(tokenizer, message["content"] + END)
        newline = _ids(tokenizer, "\n")
        input_ids += header + body + newline
        trained = body if role == "model" else [IGNORE_INDEX] * len(body)
        labels += [IGNORE_INDEX] * len(header) + trained + [IGNORE_INDEX] * len(newline)
    return input_ids, labels


def encode_prompt(tokenizer, messages):
    """Token ids of the conversation so far, ending where the model's answer starts."""
    input_ids, _ = encode_chat(tokenizer, messages)
    return input_ids + _ids(tokenizer, f"{START}model\n")


def split_prompt_reference(messages):
    """A test example's prompt is every turn before the last assistant turn; the reference is that turn."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]
