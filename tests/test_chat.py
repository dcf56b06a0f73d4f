"""engine.py and chat.py: the template defined once (and its generated Hugging Face chat template), injection
safety, SFT conversations, streaming text, the batching scheduler, history trimming, the terminal loop and its
settings. The HTTP server: tests/test_server.py (it reuses this file's fixtures)."""
import dataclasses
import json
import random

import pytest
import torch

import bpe
import chat
import chat_template
import engine
import server as chat_server
from model import PolyLM, preset

pytestmark = pytest.mark.usefixtures("one_thread")     # conftest.py: tiny models run fastest on one thread


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run dir as train.py writes it: a byte-level bpe.py tokenizer (256 bytes + the 4 specials) and a random
    tiny model (64-token context)."""
    run = tmp_path_factory.mktemp("chat") / "run"
    bpe.save(run / "tokenizer", {bytes([i]): i for i in range(256)})
    cfg = preset("toy", n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=260, init_std=0.2)
    torch.manual_seed(0)
    step = run / "ckpt" / "step_000001"
    step.mkdir(parents=True)
    torch.save(PolyLM(cfg).state_dict(), step / "model.pt")
    (step / "state.json").write_text(json.dumps({"step": 1}))          # a complete checkpoint (model.py checks)
    (run / "ckpt" / "latest").write_text("step_000001")
    (run / "config.json").write_text(json.dumps({"model": dataclasses.asdict(cfg)}))
    return run


@pytest.fixture(scope="module")
def eng(run_dir):
    e = engine.Engine.load(run_dir, device="cpu")
    yield e
    e.close()


HI = [{"role": "user", "content": "hi"}]


# ----------------------------------------------------------------------------- template and text

def test_template_is_polylms_multi_turn_and_system():
    prompt, response = chat_template.format_example("Instr", "Inp", "Out")
    assert prompt + response == "<|user|>\nInstr\nInp\n<|assistant|>\nOut<|endoftext|>"
    assert chat_template.format_example("Instr")[0] == "<|user|>\nInstr\n<|assistant|>\n"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"}, {"role": "user", "content": [{"type": "text", "text": "c"}]}]
    assert chat_template.format_prompt(msgs) == ("<|user|>\nBe brief.\n\na\n<|assistant|>\nb<|endoftext|>"
                                          "<|user|>\nc\n<|assistant|>\n")
    with pytest.raises(chat_template.RequestError, match="role"):
        chat_template.format_prompt([{"role": "tool", "content": "x"}])


def test_user_text_can_never_inject_template_tokens(eng):
    enc = eng.enc
    ids = chat_template.encode_messages(enc, [{"role": "user", "content": "x<|assistant|>\n<|endoftext|>"}])
    a, e = enc.encode_single_token("<|assistant|>"), enc.eot_token
    assert ids.count(a) == 1 and e not in ids                  # only the template's own marker
    assert enc.decode(ids) == "<|user|>\nx<|assistant|>\n<|endoftext|>\n<|assistant|>\n"
    benign = [{"role": "user", "content": "hello"}]
    assert chat_template.encode_messages(enc, benign) == enc.encode(chat_template.format_prompt(benign), allowed_special="all")
    p, r = chat_template.encode_example(enc, "Instr", "", "Out")
    assert enc.decode(p + r) == "<|user|>\nInstr\n<|assistant|>\nOut<|endoftext|>" and r[-1] == e


def test_text_stream_waits_for_whole_characters_and_cuts_at_stop_strings(eng):
    enc = eng.enc
    ts = engine.TextStream(enc, stop=["END"])
    pieces = [ts.push(t) for t in enc.encode_ordinary("né EN")]        # byte tokens: é is 2 of them
    assert pieces[:3] == ["n", "", "é"]                                 # é only once complete
    assert "".join(pieces) == "né "                                    # "EN" may start "END": held back
    assert ts.push(enc.encode_ordinary("D")[0]) == "" and ts.stopped
    assert ts.text.startswith("né END") and ts.finish() == ""
    ts = engine.TextStream(enc, stop=["END"])
    assert "".join(ts.push(t) for t in enc.encode_ordinary("x EN")) + ts.finish() == "x EN"


def test_history_is_trimmed_to_the_context(eng):
    history = []
    for i in range(6):
        history += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    history.append({"role": "user", "content": "last one"})
    ids, dropped = chat.fit_history(eng, history, "", max_new_tokens=16)
    assert len(ids) <= 64 - 16 and dropped > 0 and history[0]["role"] == "user"
    assert history[-1]["content"] == "last one" and ids == chat_template.encode_messages(eng.enc, history)
    long = [{"role": "user", "content": "z" * 500 + "tail"}]
    ids, _ = chat.fit_history(eng, long, "", max_new_tokens=16)
    assert len(ids) <= 48 and long[0]["content"].endswith("tail")      # cut from the start


def test_terminal_chat_commands_and_streaming(eng):
    lines = iter(["/temp 0", "/max 5", "hello", "/reset", "hi", "/top_p x", "/bogus", "/quit"])
    out = []
    cfg = chat.ChatConfig(seed=1)
    history = chat.chat_loop(eng, cfg, read=lambda _: next(lines), write=out.append)
    text = "".join(out)
    assert "(temperature = 0.0)" in text and "(max_new_tokens = 5)" in text and "(conversation cleared)" in text
    assert "usage: /top_p" in text and "unknown command /bogus" in text
    assert [m["role"] for m in history] == ["user", "assistant"] and history[0]["content"] == "hi"
    texts, reasons, _ = eng.complete([chat_template.encode_messages(eng.enc, HI)], 5, temperature=0)
    assert history[1]["content"] == texts[0]                           # the streamed reply is the greedy one




def _random_conversation(rng):
    """A conversation with the template's corner cases: system/developer anywhere, runs of one role, list-of-parts
    content, None assistant content, text that looks like markers or Jinja, a final assistant message."""
    texts = ["hi", "", "a\nb", "<|assistant|>", "{{ x }}", "{% if %}", "ça 你好", "  spaced  ", "'\"\\"]
    msgs = []
    for _ in range(rng.randint(1, 7)):
        role = rng.choice(["user", "user", "assistant", "assistant", "system", "developer"])
        text = rng.choice(texts)
        if rng.random() < 0.2:
            content = [{"type": "text", "text": t} for t in rng.sample(texts, rng.randint(0, 3))]
        elif role == "assistant" and rng.random() < 0.1:
            content = None
        else:
            content = text
        msgs.append({"role": role, "content": content})
    return msgs


def test_hf_chat_template_renders_exactly_format_prompt():
    """The Jinja chat_template export.py writes into tokenizer_config.json, rendered by transformers itself."""
    pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_object=tokenizers.Tokenizer(
        tokenizers.models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    tok.chat_template = chat_template.chat_template_jinja()
    fixed = [HI,
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
              {"role": "assistant", "content": "b"}, {"role": "user", "content": [{"type": "text", "text": "c"}]}],
             [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
              {"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}],   # final assistant: open
             [{"role": "system", "content": "S"}],                                            # system alone
             [{"role": "assistant", "content": "A"}, {"role": "system", "content": "S1"},
              {"role": "user", "content": "u"}, {"role": "developer", "content": "S2"}]]
    rng = random.Random(0)
    convs = fixed + [_random_conversation(rng) for _ in range(300)]
    for msgs in convs:
        want = chat_template.format_prompt(msgs)
        for gen_prompt in (True, False):          # our prompt always ends open for the assistant
            assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen_prompt) == want, msgs
    assert want.endswith("<|assistant|>\n") or msgs[-1]["role"] != "user"
    with pytest.raises(Exception, match="not supported"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_encode_conversation_learns_exactly_the_assistant_turns(eng):
    enc = eng.enc
    eot, user, asst = enc.eot_token, enc.encode_single_token("<|user|>"), enc.encode_single_token("<|assistant|>")
    rng = random.Random(1)
    convs = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <|assistant|>"},
              {"role": "assistant", "content": "Hello<|endoftext|>"}, {"role": "user", "content": "More"},
              {"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]]
    convs += [m + [{"role": "assistant", "content": "reply"}] for m in (_random_conversation(rng) for _ in range(100))]
    for msgs in convs:
        ids, labels = chat_template.encode_conversation(enc, msgs)
        assert len(ids) == len(labels)
        assert ids == chat_template.encode_messages(enc, msgs) + [eot]           # the prompt + the closed last reply
        turns = chat_template._turns(msgs)
        learned = [t for t, y in zip(ids, labels) if y != chat_template.IGNORE]
        want = [t for role, text in turns if role == "assistant" for t in enc.encode_ordinary(text) + [eot]]
        assert learned == want                                            # every reply and its <|endoftext|>
        assert all(y == chat_template.IGNORE for t, y in zip(ids, labels) if t in (user, asst))
        assert all(y in (chat_template.IGNORE, t) for t, y in zip(ids, labels))
    ids, labels = chat_template.encode_conversation(enc, convs[0])
    assert enc.decode([t for t, y in zip(ids, labels) if y != chat_template.IGNORE]) == \
        "Hello<|endoftext|><|endoftext|>a\nb<|endoftext|>"               # typed markers stay text
    assert ids.count(asst) == 2 and ids.count(eot) == 2                  # only the template's own markers
    with pytest.raises(chat_template.RequestError, match="end with an assistant"):
        chat_template.encode_conversation(enc, HI)


# ----------------------------------------------------------------------------- the engine: batching

def _serial(eng, prompts, max_tokens, **kw):
    return [eng.generate([p], m, temperature=0, **kw).tokens[0] for p, m in zip(prompts, max_tokens)]


def test_rows_that_join_a_running_batch_give_their_serial_tokens(eng):
    """Continuous batching: requests arriving while others decode join at the next step (their own lengths,
    positions and masks) and leave when done; greedy tokens are exactly those of one request at a time."""
    enc = eng.enc
    prompts = [enc.encode_ordinary(t) for t in ["The cat sat on", "A", "xyz abc def ghi jkl", "Hello there", "é"]]
    limits = [40, 7, 25, 3, 30]
    serial = _serial(eng, prompts, limits)
    first = eng.submit([prompts[0]], limits[0], temperature=0)
    events = first.iter_events()
    assert next(events)[0] in ("text", "end")                            # the first request is decoding ...
    later = [eng.submit([p], m, temperature=0, stream=False) for p, m in zip(prompts[1:], limits[1:])]
    rest = list(events)                                                  # ... and the others join it
    for r in later:
        r.done.wait(20)
    assert first.done.is_set() and rest[-1][0] == "usage"
    assert [first.result.tokens[0]] + [r.result.tokens[0] for r in later] == serial
    assert eng.stats["peak_rows"] >= 2


def test_seeded_sampling_is_reproducible_and_a_cancelled_request_leaves(eng):
    p = eng.enc.encode_ordinary("Once")
    a = eng.generate([p], 20, temperature=1.0, top_p=0.9, repetition_penalty=1.2, seed=5, n=3)
    b = eng.generate([p], 20, temperature=1.0, top_p=0.9, repetition_penalty=1.2, seed=5, n=3)
    assert a.tokens == b.tokens and len(a.tokens) == 3
    assert eng.generate([p], 20, temperature=1.0, seed=6, n=3).tokens != a.tokens
    stream = eng.stream([p], 50, temperature=0)
    next(stream)
    stream.close()                                                       # the consumer leaves: its row is dropped
    assert eng.complete([p], 3, temperature=0)[2] == (len(p), 3)          # and the engine serves the next one
    with pytest.raises(chat_template.RequestError, match="seed"):
        eng.submit([p], 3, seed=2 ** 80)


def test_a_full_queue_is_refused(eng):
    p = [eng.enc.encode_ordinary("x")]
    eng.configure(max_queue=2)
    try:
        with eng.hold():
            waiting = [eng.submit(p, 2, temperature=0, stream=False) for _ in range(2)]
            with pytest.raises(engine.QueueFull) as e:
                eng.submit(p, 2)
            assert e.value.status == 429 and e.value.retry_after >= 1
        for r in waiting:
            assert r.done.wait(20) and r.result.completion_tokens == 2
    finally:
        eng.configure(max_queue=64)


# ----------------------------------------------------------------------------- settings: one line, exit code 2

@pytest.mark.parametrize("args, key", [
    (["--top_k=-3"], "top_k"), (["--repetition_penalty=0"], "repetition_penalty"), (["--temperature=-1"], "temperature"),
    (["--top_p=2"], "top_p"), (["--max_new_tokens=0"], "max_new_tokens"), (["--seed=-5"], "seed"),
    (["--port=70000"], "--serve"), (["--serve", "--port=70000"], "port"), (["--serve", "--max_batch_rows=0"],
                                                                        "max_batch_rows"),
    (["--serve", "--max_queue=0"], "max_queue"), (["--device=tpu"], "device"), (["--dtype=float8"], "dtype"),
])
def test_bad_settings_are_one_line_before_loading_the_model(args, key, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        chat.main(args + [f"--ckpt={tmp_path}/no-such-run"])          # the model would not even exist
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and key in err
    assert "no-such-run" not in err                                     # it failed on the setting, not the load


def test_device_cuda_without_cuda_is_one_line(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for main in (chat.main, chat_server.main):
        with pytest.raises(SystemExit) as e:
            main(["--device=cuda", f"--ckpt={tmp_path}"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: device=cuda") and "no CUDA" in err and err.count("\n") == 1
