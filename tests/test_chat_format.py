"""ChatFormat: a model's chat template decides the tokens, the trained answer positions, the stop token and the
trainable turn tokens. On Gemma's format it gives exactly the tokens of the hand-written format it replaces."""
import pytest

from peftbench.chat_format import IGNORE_INDEX, ChatFormat, resolve_template
from peftbench.errors import UserError
from tiny import make_tokenizer

# ChatML (Qwen's turn format), written out for a test tokenizer: system turns kept.
CHATML = ("{%- for m in messages -%}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}"
          "{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")
NO_SYSTEM = ("{%- for m in messages -%}{%- if m['role'] == 'system' -%}{{ raise_exception('no system role') }}"
             "{%- endif -%}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}{%- endfor -%}"
             "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")
CONVERSATIONS = [
    [{"role": "user", "content": "What does the Python function do?"},
     {"role": "assistant", "content": "It returns the value of the argument."}],
    [{"role": "user", "content": "Which module provides dedent?"},
     {"role": "assistant", "content": "The textwrap module."},
     {"role": "user", "content": "Name some functions from the math module."},
     {"role": "assistant", "content": "gcd, sqrt and floor."}],
]


def hand_written_gemma(tokenizer, messages, prompt=False):
    """The hand-written Gemma format this module replaced (peftbench 0.1's chat.py), kept as the reference:
    pieces tokenized one by one, answers and their <end_of_turn> trained."""
    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    input_ids, labels = [tokenizer.bos_token_id], [IGNORE_INDEX]
    for message in messages:
        role = "model" if message["role"] == "assistant" else "user"
        header, body, newline = ids(f"<start_of_turn>{role}\n"), ids(message["content"] + "<end_of_turn>"), ids("\n")
        input_ids += header + body + newline
        labels += [IGNORE_INDEX] * len(header) + (body if role == "model" else [IGNORE_INDEX] * len(body)) \
            + [IGNORE_INDEX] * len(newline)
    return input_ids + ids("<start_of_turn>model\n") if prompt else (input_ids, labels)


def gemma_tokenizer():
    return make_tokenizer()  # tests/tiny.py gives it the built-in Gemma template


def chatml_tokenizer(template=CHATML):
    tokenizer = make_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = template
    return tokenizer


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_gemma_template_gives_the_hand_written_formats_tokens(messages):
    tokenizer = gemma_tokenizer()
    fmt = ChatFormat(tokenizer)
    assert fmt.encode_chat(messages) == hand_written_gemma(tokenizer, messages)
    assert fmt.encode_prompt(messages[:-1]) == hand_written_gemma(tokenizer, messages[:-1], prompt=True)
    assert fmt.stop_ids == sorted({tokenizer.convert_tokens_to_ids("<end_of_turn>"), tokenizer.eos_token_id})
    assert fmt.turn_tokens == ["<start_of_turn>", "<end_of_turn>"]


@pytest.mark.parametrize("make", [gemma_tokenizer, chatml_tokenizer])
def test_a_batch_encodes_each_conversation_as_alone(make):
    """Training and generation encode their whole sets in one tokenizer call: each conversation's tokens and
    labels are exactly its own, whatever comes before or after it in the batch."""
    fmt = ChatFormat(make())
    conversations = CONVERSATIONS + [[{"role": "system", "content": "Answer briefly."}] + CONVERSATIONS[0],
                                     CONVERSATIONS[1][:2], CONVERSATIONS[0]]
    alone = [fmt.encode_chats([messages])[0] for messages in conversations]
    assert fmt.encode_chats(conversations) == alone
    assert alone[0] == alone[-1] and alone[1] != alone[3]
    prompts = [messages[:-1] for messages in conversations]
    assert fmt.encode_prompts(prompts) == [fmt.encode_prompts([p])[0] for p in prompts]
    assert fmt.encode_chats([]) == [] and fmt.encode_prompts([]) == []


def test_chatml_answers_are_the_only_trained_tokens_and_end_with_the_turn():
    tokenizer = chatml_tokenizer()
    fmt = ChatFormat(tokenizer)
    ids, labels = fmt.encode_chat(CONVERSATIONS[1])
    assert len(ids) == len(labels)
    assert ids == tokenizer(tokenizer.apply_chat_template(CONVERSATIONS[1], tokenize=False),
                            add_special_tokens=False)["input_ids"]
    trained = tokenizer.decode([t for t, label in zip(ids, labels) if label != IGNORE_INDEX])
    assert trained == "The textwrap module.<|im_end|>gcd, sqrt and floor.<|im_end|>"
    assert fmt.end_of_turn_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert fmt.turn_tokens == ["<|im_start|>", "<|im_end|>"]
    assert fmt.system_role == "kept"


def test_a_template_without_a_system_role_gets_it_folded_into_the_first_user_turn():
    fmt = ChatFormat(chatml_tokenizer(NO_SYSTEM))
    assert fmt.system_role == "folded"
    ids, _ = fmt.encode_chat([{"role": "system", "content": "Be brief."}] + CONVERSATIONS[0])
    text = fmt.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>user\nBe brief.\n\nWhat does the Python function do?")


def test_a_model_without_a_template_is_refused_in_one_line_naming_the_fix():
    tokenizer = make_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(UserError) as error:
        ChatFormat(tokenizer, "tiny")
    assert "model.chat_template" in str(error.value) and "gemma" in str(error.value)
    assert "\n" not in str(error.value)


def test_an_unknown_template_setting_is_refused_in_one_line():
    with pytest.raises(UserError, match="fix model.chat_template"):
        resolve_template("llama9")


def test_a_template_that_folds_the_system_turn_itself_says_so():
    """Gemma's template writes a system turn into the first user turn: the report must not say it was kept."""
    fmt = ChatFormat(gemma_tokenizer())
    assert fmt.system_role == "folded"
    assert ChatFormat(chatml_tokenizer()).system_role == "kept"
    messages = [{"role": "system", "content": "Be brief."}] + CONVERSATIONS[0]
    assert fmt.encode_chat(messages) == hand_written_gemma(fmt.tokenizer, fmt.prepare(messages))
