"""A model's chat format, read from its own chat template: how a conversation becomes tokens, which tokens
are the assistant's answers (the only ones trained), which token ends a turn (generation stops there) and
which special tokens frame a turn (their embedding rows train, so a base model learns to end its turn).

Everything is derived by rendering conversations with the tokenizer's `apply_chat_template`:
- an answer's tokens are what rendering the conversation *with* that answer adds to rendering it up to the
  answer with the generation prompt; a template whose earlier turns change when a later one is added (some
  drop past reasoning) cannot be trained this way, and says so in one line;
- the end of a turn is the first special token that follows a probe answer's own tokens;
- a template that refuses a system turn gets it folded into the first user turn (`system_role: folded`).

A tokenizer without a template (the embedded GGUF's, a base model's) gets one of the built-in templates by
name (`model.chat_template: gemma`) or a Jinja file; without either it is refused before any data is read.
"""
from pathlib import Path

from peftbench.errors import UserError

IGNORE_INDEX = -100  # label of tokens the loss skips
BUILTIN_TEMPLATES = Path(__file__).with_name("chat_templates")
PROBE_USER, PROBE_ANSWER = "Say yes.", "Yes"


def builtin_template_names():
    return sorted(p.stem for p in BUILTIN_TEMPLATES.glob("*.jinja"))


def resolve_template(setting):
    """The Jinja text a `model.chat_template` setting names: a built-in name or a file's path."""
    if setting in builtin_template_names():
        return (BUILTIN_TEMPLATES / f"{setting}.jinja").read_text()
    path = Path(setting)
    if path.suffix == ".jinja" and path.is_file():
        return path.read_text()
    raise UserError(f"model.chat_template {setting!r} is neither a built-in template "
                    f"({', '.join(builtin_template_names())}) nor a .jinja file: fix model.chat_template")


class ChatFormat:
    def __init__(self, tokenizer, model_name="the model"):
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(f"{model_name} has no chat template: set model.chat_template to a built-in "
                            f"({', '.join(builtin_template_names())}) or a .jinja file")
        self.tokenizer = tokenizer
        self.template = tokenizer.chat_template
        self.model_name = model_name
        self.system_role = self._system_role()
        self._probe = self._render([{"role": "user", "content": PROBE_USER},
                                    {"role": "assistant", "content": PROBE_ANSWER}])  # one answered turn
        self.end_of_turn_id = self._end_of_turn_id()
        self.stop_ids = sorted({self.end_of_turn_id, tokenizer.eos_token_id} - {None})
        self.turn_tokens = self._turn_tokens()

    # ------------------------------------------------------------------ rendering

    def _render(self, messages, generation_prompt=False):
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _ids(self, text):
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _system_role(self):
        """kept: the template renders a system turn; folded: it refuses one (prepare folds it), or folds it
        into the first user turn itself (Gemma's)."""
        probe = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROBE_USER}]
        try:
            rendered = self._render(probe, generation_prompt=True)
        except Exception:  # templates refuse with raise_exception (a jinja2 error) or a TemplateError
            return "folded"
        folded = self._render(self._fold(probe), generation_prompt=True)
        return "folded" if rendered == folded else "kept"

    def prepare(self, messages):
        """The conversation as the template takes it: a system turn folded into the first user turn where the
        template refuses system turns (said in the report: format.system_role)."""
        if self.system_role == "kept" or not messages or messages[0]["role"] != "system":
            return messages
        return self._fold(messages)

    @staticmethod
    def _fold(messages):
        system, rest = messages[0]["content"], list(messages[1:])
        if rest and rest[0]["role"] == "user":
            rest[0] = {"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}
        else:
            rest.insert(0, {"role": "user", "content": system})
        return rest

    def _end_of_turn_id(self):
        prompt = self._render([{"role": "user", "content": PROBE_USER}], generation_prompt=True)
        full = self._probe
        if not full.startswith(prompt):
            raise UserError(f"{self.model_name}'s chat template renders a conversation differently once the "
                            "answer is added: set model.chat_template to a template whose turns only append")
        answer = self._ids(full[len(prompt):])
        own = len(self._ids(PROBE_ANSWER))
        special = set(self.tokenizer.all_special_ids) | set(getattr(self.tokenizer, "added_tokens_decoder", {}))
        after = [token for token in answer[own:] if token in special]
        if not after:
            raise UserError(f"{self.model_name}'s chat template ends an answer with no special token: "
                            "set model.chat_template to one that closes each turn with one")
        return after[0]

    def _turn_tokens(self):
        """The special tokens the template writes around a turn (not BOS, EOS or padding): trainable rows."""
        text = self._probe
        skip = {self.tokenizer.bos_token_id, self.tokenizer.pad_token_id}
        # special added tokens only: some vocabularies add plain ones too (Gemma's runs of whitespace)
        special = {i for i, t in getattr(self.tokenizer, "added_tokens_decoder", {}).items() if t.special}
        seen = []
        for token in self._ids(text):
            if token in special and token not in skip and token not in seen:
                seen.append(token)
        if self.end_of_turn_id not in seen:
            seen.append(self.end_of_turn_id)
        return self.tokenizer.convert_ids_to_tokens(seen)

    # ------------------------------------------------------------------ encoding

    def encode_chat(self, messages):
        """Token ids of a whole conversation and labels that are IGNORE_INDEX everywhere but the assistant's
        answers (each answer's tokens through its end-of-turn token, so the model learns to stop)."""
        return self.encode_chats([messages])[0]

    def encode_chats(self, conversations):
        """encode_chat of each conversation, with all their text tokenized in one batch: the tokenizer
        splits a batch over the CPU's cores, where one text at a time takes one (each training job encodes
        its whole training set)."""
        pieces, spans = [], []  # spans: per conversation, its pieces' (role, index in pieces)
        for messages in conversations:
            parts = []
            for text, role in self._pieces(self.prepare(messages)):
                parts.append((role, len(pieces)))
                pieces.append(text)
            spans.append(parts)
        ids = self.tokenizer(pieces, add_special_tokens=False)["input_ids"] if pieces else []
        return [self.assemble([(ids[index], role) for role, index in parts]) for parts in spans]

    def assemble(self, pieces):
        """(input_ids, labels) of one conversation from its pieces' (token ids, role) in order: labels are
        IGNORE_INDEX but on each answer's tokens through its end-of-turn token."""
        input_ids, labels = [], []
        for piece, role in pieces:
            if role == "answer":
                stop = piece.index(self.end_of_turn_id) + 1 if self.end_of_turn_id in piece else len(piece)
                labels += piece[:stop] + [IGNORE_INDEX] * (len(piece) - stop)
            else:
                labels += [IGNORE_INDEX] * len(piece)
            input_ids += piece
        return input_ids, labels

    def _pieces(self, messages):
        """The rendered conversation cut into (text, "context" | "answer") pieces: before each answer what
        rendering up to it with the generation prompt adds, then what the answer itself adds, then the rest."""
        pieces, rendered = [], ""
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._render(messages[:i], generation_prompt=True)
            after = self._render(messages[: i + 1])
            if not before.startswith(rendered) or not after.startswith(before):
                raise UserError(f"{self.model_name}'s chat template re-renders earlier turns when a later one is "
                                "added: set model.chat_template to a template whose turns only append")
            pieces += [(before[len(rendered):], "context"), (after[len(before):], "answer")]
            rendered = after
        pieces.append((self._render(messages)[len(rendered):], "tail"))
        return pieces

    def encode_prompt(self, messages):
        """Token ids of the conversation so far, ending where the model's answer starts."""
        return self.encode_prompts([messages])[0]

    def encode_prompts(self, prompts):
        """encode_prompt of each, tokenized in one batch (as encode_chats)."""
        texts = [self._render(self.prepare(messages), generation_prompt=True) for messages in prompts]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def split_prompt_reference(messages):
    """A test example's prompt is every turn before the last assistant turn; the reference is that turn."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]
