from peftbench.chat import IGNORE_INDEX, encode_chat, encode_prompt, end_of_turn_id, split_prompt_reference

CONVERSATION = [
    {"role": "user", "content": "What does math.gcd do?"},
    {"role": "assistant", "content": "It returns the greatest common divisor."},
    {"role": "user", "content": "Which module?"},
    {"role": "assistant", "content": "The math module."},
]


def test_gemma_turn_format(tokenizer):
    ids, _ = encode_chat(tokenizer, CONVERSATION[:2])
    assert tokenizer.decode(ids) == (
        "<bos><start_of_turn>user\nWhat does math.gcd do?<end_of_turn>\n"
        "<start_of_turn>model\nIt returns the greatest common divisor.<end_of_turn>\n"
    )


def test_loss_only_on_answers_and_their_end_of_turn(tokenizer):
    ids, labels = encode_chat(tokenizer, CONVERSATION)
    assert len(ids) == len(labels)
    trained = [t for t, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(ids, labels))
    assert tokenizer.decode(trained) == (
        "It returns the greatest common divisor.<end_of_turn>The math module.<end_of_turn>"
    )
    assert trained.count(end_of_turn_id(tokenizer)) == 2


def test_prompt_is_every_turn_before_the_last_answer(tokenizer):
    prompt, reference = split_prompt_reference(CONVERSATION)
    assert reference == "The math module."
    assert prompt == CONVERSATION[:3]
    text = tokenizer.decode(encode_prompt(tokenizer, prompt))
    assert text.endswith("Which module?<end_of_turn>\n<start_of_turn>model\n")
