"""PolyLM-MultiAlpaca's chat template, defined once (PolyLM paper, arXiv 2307.06018, §6):

    <|user|>\n{instruction}\n{input}\n<|assistant|>\n{output}<|endoftext|>

sft.py trains with it (encode_example, encode_conversation), chat.py and server.py prompt with it through engine.py
(encode_messages), and export.py writes it into tokenizer_config.json as a Hugging Face chat template GENERATED from
the same rules (chat_template_jinja), so training, inference and other tools cannot drift apart.

Invariants: template markers are the tokenizer's special tokens; every text (user, system, assistant) is encoded with
encode_ordinary, so typing "<|assistant|>" into a message can never inject a marker; system text goes before the
first user message and consecutive messages of one role are joined, the same way in every function here.
"""
import json

import bpe


USER, ASSISTANT, EOT = "<|user|>", "<|assistant|>", "<|endoftext|>"
SYSTEM_ROLES = ("system", "developer")   # their text goes before the first user message
SYSTEM_JOIN = "\n"                       # between several system messages
SYSTEM_SEP = "\n\n"                      # between the system text and the first user message
SAME_ROLE_JOIN = "\n"                    # between consecutive messages of one role


class RequestError(ValueError):
    """A bad request or record: becomes HTTP 400 (or `status`) with an OpenAI-style error object naming `param`."""

    def __init__(self, message, param=None, code=None, status=400):
        super().__init__(message)
        self.param, self.code, self.status = param, code, status


def _content(msg, i):
    """The text of a message: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
    c = msg.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                   for p in c):
        return "".join(p["text"] for p in c)
    if c is None and msg.get("role") == "assistant":
        return ""
    raise RequestError(f"messages[{i}].content must be a string (or a list of text parts)", f"messages[{i}].content")


def _turns(messages):
    """OpenAI-style messages -> [(role, text)] with role user/assistant: system (and developer) text goes before the
    first user message, consecutive messages of one role are joined with a newline."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of {role, content} objects", "messages")
    system, turns = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RequestError(f"messages[{i}] must be an object with 'role' and 'content'", f"messages[{i}]")
        role, text = m.get("role"), _content(m, i)
        if role in SYSTEM_ROLES:
            system.append(text)
        elif role in ("user", "assistant"):
            if turns and turns[-1][0] == role:
                turns[-1] = (role, turns[-1][1] + SAME_ROLE_JOIN + text)
            else:
                turns.append((role, text))
        else:
            raise RequestError(f"messages[{i}].role {role!r} is not supported (system, user or assistant)",
                               f"messages[{i}].role")
    if system:
        sys_text = SYSTEM_JOIN.join(system)
        first_user = next((i for i, (r, _) in enumerate(turns) if r == "user"), None)
        if first_user is None:
            turns.insert(0, ("user", sys_text))
        else:
            turns[first_user] = ("user", sys_text + SYSTEM_SEP + turns[first_user][1])
    return turns


def _turn_segments(role, text, last):
    """One turn as pieces (True, special token) / (False, text): a user turn is <|user|>\\n{text}\\n<|assistant|>\\n,
    an assistant turn {text}<|endoftext|>, except that a final assistant turn is left open for the model."""
    if role == "user":
        return [(True, USER), (False, "\n" + text + "\n"), (True, ASSISTANT), (False, "\n")]
    return [(False, text)] + ([] if last else [(True, EOT)])


def _segments(messages):
    """The template of a conversation as pieces: (True, special token) or (False, plain text), empty texts dropped."""
    turns = _turns(messages)
    out = [s for k, (role, text) in enumerate(turns) for s in _turn_segments(role, text, k == len(turns) - 1)]
    return [(s, t) for s, t in out if s or t]


def format_prompt(messages):
    """The prompt text of a conversation, ending where the assistant's reply starts (or continues)."""
    return "".join(t for _, t in _segments(messages))


def format_example(instruction, input="", output=""):
    """(prompt, response) of one Alpaca/MultiAlpaca record, PolyLM's template:
    '<|user|>\\n{instruction}\\n{input}\\n<|assistant|>\\n' and '{output}<|endoftext|>' (no input line when empty)."""
    user = instruction + ("\n" + input if input else "")
    return format_prompt([{"role": "user", "content": user}]), output + EOT


def _encode_segments(enc, segments):
    ids = []
    for special, text in segments:
        if special:
            try:
                ids.append(enc.encode_single_token(text))
            except KeyError:
                raise ValueError(f"the tokenizer has no {text} token; chat needs a bpe.py tokenizer with "
                                 f"{', '.join(bpe.SPECIAL_TOKENS)}") from None
        else:
            ids += enc.encode_ordinary(text)
    return ids


def encode_messages(enc, messages):
    """Token ids of format_prompt(messages): markers as special tokens, every text with encode_ordinary (so text
    that looks like a marker stays text)."""
    return _encode_segments(enc, _segments(messages))


def encode_example(enc, instruction, input="", output=""):
    """(prompt ids, response ids) of one record, the response ending in <|endoftext|>; injection-safe like
    encode_messages (for sft.py)."""
    user = instruction + ("\n" + input if input else "")
    return encode_messages(enc, [{"role": "user", "content": user}]), enc.encode_ordinary(output) + [enc.eot_token]


IGNORE = -100   # label of a token that is not learned (torch's cross-entropy ignore_index)


def encode_conversation(enc, messages):
    """(ids, labels) of a multi-turn SFT record in OpenAI `messages` form (system/user/assistant), for sft.py.

    ids = encode_messages(messages) + [<|endoftext|>] (the conversation must end with an assistant message, which
    is then closed). labels = ids on every assistant turn's text and its closing <|endoftext|> (what the model
    learns to say), IGNORE (-100) on everything else: markers, the newline after <|assistant|>, user and system text.
    Consecutive messages of one role and system text are merged exactly as in the prompt (_turns)."""
    turns = _turns(messages)
    if turns[-1][0] != "assistant":
        raise RequestError("an SFT conversation must end with an assistant message (the reply to learn)", "messages")
    ids, labels = [], []
    for k, (role, text) in enumerate(turns):
        seg = _turn_segments(role, text, last=False)           # every assistant turn closed, the last one too
        part = _encode_segments(enc, [(s, t) for s, t in seg if s or t])
        ids += part
        labels += part if role == "assistant" else [IGNORE] * len(part)
    return ids, labels


def _jinja_str(s):
    """A Python string as a Jinja string literal."""
    return json.dumps(s)


def chat_template_jinja() -> str:
    """A Hugging Face `chat_template` (Jinja) that renders exactly format_prompt(messages).

    Generated from the constants and rules above (system text first, consecutive roles joined, a final assistant
    turn left open), so it cannot drift from the Python template. Our prompt always ends open for the assistant,
    so `add_generation_prompt` changes nothing: after a user turn the prompt ends with '<|assistant|>\\n', after a
    final assistant message with its text (continue_final_message). Unknown roles or non-text content raise through
    HF's raise_exception. Turns close lazily: a user turn's '\\n<|assistant|>\\n' and an assistant turn's
    '<|endoftext|>' are written when the next turn of the other role starts (or, for the user, at the end)."""
    q = _jinja_str
    close_user = q("\n") + " ~ " + q(ASSISTANT) + " ~ " + q("\n")
    sys_roles = "[" + ", ".join(q(r) for r in SYSTEM_ROLES) + "]"
    parts = [
        "{%- if messages is not defined or messages is string or messages | length == 0 -%}"
        "{{- raise_exception('messages must be a non-empty list of {role, content} objects') -}}{%- endif -%}",
        # 1. the text of every message, and the system text
        "{%- set ns = namespace(sys='', has_sys=false, has_user=false, role='', out='', first=true) -%}",
        "{%- macro text(m) -%}"
        "{%- if m.content is string -%}{{- m.content -}}"
        "{%- elif m.content is none and m.role == 'assistant' -%}"
        "{%- elif m.content is iterable and m.content is not mapping -%}"
        "{%- for p in m.content -%}"
        "{%- if p is mapping and p.type == 'text' and p.text is string -%}{{- p.text -}}"
        "{%- else -%}{{- raise_exception('message content must be a string or a list of text parts') -}}{%- endif -%}"
        "{%- endfor -%}"
        "{%- else -%}{{- raise_exception('message content must be a string or a list of text parts') -}}{%- endif -%}"
        "{%- endmacro -%}",
        "{%- for m in messages -%}"
        "{%- if m.role in " + sys_roles + " -%}"
        "{%- set ns.sys = ns.sys ~ (" + q(SYSTEM_JOIN) + " if ns.has_sys else '') ~ text(m) -%}"
        "{%- set ns.has_sys = true -%}"
        "{%- elif m.role == 'user' -%}{%- set ns.has_user = true -%}"
        "{%- elif m.role != 'assistant' -%}"
        "{{- raise_exception('role ' ~ m.role ~ ' is not supported (system, user or assistant)') -}}"
        "{%- endif -%}{%- endfor -%}",
        # 2. system text without any user message: a user turn of its own, first
        "{%- if ns.has_sys and not ns.has_user -%}"
        "{%- set ns.out = " + q(USER) + " ~ " + q("\n") + " ~ ns.sys -%}{%- set ns.role = 'user' -%}{%- endif -%}",
        # 3. the turns
        "{%- for m in messages if m.role not in " + sys_roles + " -%}"
        "{%- if m.role == ns.role -%}"
        "{%- set ns.out = ns.out ~ " + q(SAME_ROLE_JOIN) + " ~ text(m) -%}"
        "{%- elif m.role == 'user' -%}"
        "{%- if ns.role == 'assistant' -%}{%- set ns.out = ns.out ~ " + q(EOT) + " -%}{%- endif -%}"
        "{%- set ns.out = ns.out ~ " + q(USER) + " ~ " + q("\n") + " ~ "
        "(ns.sys ~ " + q(SYSTEM_SEP) + " if ns.has_sys and ns.first else '') ~ text(m) -%}"
        "{%- set ns.first = false -%}{%- set ns.role = 'user' -%}"
        "{%- else -%}"
        "{%- if ns.role == 'user' -%}{%- set ns.out = ns.out ~ " + close_user + " -%}{%- endif -%}"
        "{%- set ns.out = ns.out ~ text(m) -%}{%- set ns.role = 'assistant' -%}"
        "{%- endif -%}{%- endfor -%}",
        # 4. a final user turn is closed with the assistant marker: the prompt is open for the reply
        "{%- if ns.role == 'user' -%}{%- set ns.out = ns.out ~ " + close_user + " -%}{%- endif -%}",
        "{{- ns.out -}}",
    ]
    return "".join(parts)
