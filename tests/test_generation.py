"""TextGenerator: batched == one by one, seeds, streaming that never splits a character, chat
history trimming, fill-mask."""
import random

import pytest
import torch

from model.generation import GenerationConfig, generate_tokens
from model.text_generator import StreamDecoder, TextGenerator
from tests.helpers.tiny_models import ScriptedModel, tiny_model, tiny_tokenizer

GREEDY = GenerationConfig(do_sample=False, max_new_tokens=12, stop_on_eos=False)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny_tokenizer(str(tmp_path_factory.mktemp("gen")))


def test_greedy_batch_equals_one_by_one(tok):
    gen = TextGenerator(tiny_model(), tok)
    prompts = ["To be", "Now is the winter of our", "今天", "Friends, Romans, countrymen, lend"]
    batched = gen.batch_generate(prompts, GREEDY)
    alone = [gen.generate(p, GREEDY) for p in prompts]
    assert batched == alone and all(len(tok.encode(t)) > 0 for t in alone)


def test_greedy_batch_equals_one_by_one_with_penalties(tok):
    gen = TextGenerator(tiny_model(seed=2), tok)
    cfg = GenerationConfig(do_sample=False, max_new_tokens=16, stop_on_eos=False, repetition_penalty=1.5,
                           no_repeat_ngram_size=2)
    prompts = ["To be, or not to be", "今天", "The king"]
    plain = gen.batch_generate(prompts, GREEDY)
    assert gen.batch_generate(prompts, cfg) == [gen.generate(p, cfg) for p in prompts] != plain


def test_repetition_penalty_only_sees_each_rows_own_tokens(tok):
    # Every step prefers token 7 slightly over 8; only a row that has seen 7 should switch to 8.
    model = ScriptedModel([], tok.vocab_size, tok.eos_id)
    bias = torch.zeros(tok.vocab_size)
    bias[7], bias[8] = 2.0, 1.9
    model.forward = lambda ids, attention_mask=None, cache=None: type("Out", (), {"logits": bias.expand(
        ids.shape[0], ids.shape[1], -1)})()
    cfg = GenerationConfig(do_sample=False, max_new_tokens=1, repetition_penalty=1.5)
    assert generate_tokens(model, [[7, 9, 9, 9], [9]], cfg, tok.eos_id) == [[8], [7]]


def test_greedy_equals_full_forward_argmax(tok):
    model = tiny_model()
    ids = tok.encode("The king")
    out = generate_tokens(model, [ids], GREEDY, eos_id=tok.eos_id)[0]
    seq = list(ids)
    for _ in range(12):  # no cache: the full forward each step
        seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    assert out == seq[len(ids):]


@pytest.mark.slow
def test_compiled_step_gives_the_eager_tokens_on_a_left_padded_batch(tok):
    # The compiled step attends over the whole (masked) cache; eager steps over the keys written so far.
    model = tiny_model(seed=3)
    prompts = [tok.encode("The king"), tok.encode("Now is the winter of our"), tok.encode("今天")]
    sampled = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=12, seed=5,
                               stop_on_eos=False)
    for cfg in (GREEDY, sampled):
        eager = generate_tokens(model, prompts, cfg, eos_id=tok.eos_id)
        assert generate_tokens(model, prompts, cfg, eos_id=tok.eos_id, compiled=True) == eager
    assert eager != generate_tokens(model, prompts, GREEDY, eos_id=tok.eos_id)


@pytest.mark.parametrize("objective", ["clm", "plm"])
def test_use_cache_false_decodes_without_the_cache_to_the_same_tokens(tok, objective):
    model = tiny_model(objective, seed=4)
    prompts = [tok.encode("The king"), tok.encode("Now is the winter of our"), tok.encode("今天")]  # left padded
    sampled = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=12, seed=5,
                               stop_on_eos=False, repetition_penalty=1.3)
    for cfg in (GREEDY, sampled):
        cached = generate_tokens(model, prompts, cfg, eos_id=tok.eos_id)
        model.new_cache = None  # the uncached path must not build one
        uncached = generate_tokens(model, prompts, GenerationConfig(**{**cfg.__dict__, "use_cache": False}),
                                   eos_id=tok.eos_id)
        del model.new_cache
        assert uncached == cached and all(len(t) == 12 for t in cached)
    with pytest.raises(ValueError, match="needs use_cache=True"):
        generate_tokens(model, prompts, GenerationConfig(use_cache=False), eos_id=tok.eos_id, compiled=True)


def test_same_seed_same_output_and_top_k_one_is_greedy(tok):
    gen = TextGenerator(tiny_model(), tok)
    sampled = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=16, seed=3,
                               stop_on_eos=False)
    assert gen.generate("To be", sampled) == gen.generate("To be", sampled)
    other = GenerationConfig(**{**sampled.__dict__, "seed": 4})
    assert gen.generate("To be", sampled) != gen.generate("To be", other)
    k1 = GenerationConfig(**{**sampled.__dict__, "top_k": 1})
    assert gen.generate("To be", k1) == gen.generate("To be", GenerationConfig(**{**GREEDY.__dict__, "max_new_tokens": 16}))


def test_no_repeat_ngram_property(tok):
    gen = TextGenerator(tiny_model(), tok)
    for seed in range(15):
        cfg = GenerationConfig(do_sample=True, temperature=1.2, top_k=0, top_p=1.0, max_new_tokens=40, seed=seed,
                               no_repeat_ngram_size=3, stop_on_eos=False)
        ids = tok.encode("To be")
        out = ids + generate_tokens(gen.model, [ids], cfg, tok.eos_id)[0]
        grams = [tuple(out[i:i + 3]) for i in range(len(out) - 2)]
        assert len(grams) == len(set(grams)), seed


@pytest.mark.parametrize("text", ["今天心情很好", "crown 👑 and mask 🎭 together", "mixed 今天 👨‍👩‍👧 é"])
def test_streamed_equals_non_streamed_for_multibyte_text(tok, text):
    script = tok.encode(text)
    pieces = []
    gen = TextGenerator(ScriptedModel(script, tok.vocab_size, tok.eos_id), tok)
    streamed_result = gen.generate("x", GenerationConfig(do_sample=False, max_new_tokens=60), stream=True,
                                   callback=pieces.append)
    assert "".join(pieces) == streamed_result == text
    assert all("\ufffd" not in p for p in pieces)


def test_stream_decoder_holds_back_partial_characters(tok):
    ids = tok.encode("好")
    raw = tok.decode_bytes(ids)
    assert len(raw) == 3
    decoder = StreamDecoder(tok)
    out = [decoder.push(t) for t in ids]
    assert "".join(out) + decoder.flush() == "好" and all(p in ("", "好") for p in out)


def test_stream_decoder_equals_decode_on_random_token_sequences(tok):
    # Random ids include special tokens and stray continuation bytes: the stream must still join to
    # exactly what decode() gives, replacement characters included.
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(1, 25))]
        decoder = StreamDecoder(tok)
        assert "".join(decoder.push(t) for t in ids) + decoder.flush() == tok.decode(ids), ids


def test_random_model_stream_matches_plain(tok):
    gen = TextGenerator(tiny_model(seed=5), tok)
    cfg = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=30, seed=11)
    pieces = []
    assert gen.generate("今天", cfg, stream=True, callback=pieces.append) == gen.generate("今天", cfg)
    assert "".join(pieces) == gen.generate("今天", cfg)


def test_chat_trims_oldest_turns_and_stops_at_newline(tok):
    script = tok.encode(" Good morrow.\nUser: more")
    gen = TextGenerator(ScriptedModel(script, tok.vocab_size, tok.eos_id, max_seq_len=160), tok)
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"To be, or not to be {i}"}
               for i in range(30)]
    cfg = GenerationConfig(do_sample=False, max_new_tokens=20)
    kept = gen.trim_history(history, cfg)
    assert kept == history[-len(kept):] and 1 < len(kept) < 30
    assert len(tok.encode(gen.render_chat(kept))) <= 160 - 20
    assert len(tok.encode(gen.render_chat(history[-len(kept) - 1:]))) > 160 - 20  # one more would not fit
    assert gen.chat(history, cfg) == "Good morrow."


def test_prompt_longer_than_context_is_cut_from_the_left(tok, capsys):
    gen = TextGenerator(tiny_model(), tok)
    long_prompt = "Now is the winter of our discontent. " * 20
    out = gen.generate(long_prompt, GenerationConfig(do_sample=False, max_new_tokens=8, stop_on_eos=False))
    assert "cut to its last 56" in capsys.readouterr().err and isinstance(out, str)
    ids = gen.batch_generate_ids([long_prompt], GenerationConfig(do_sample=False, max_new_tokens=100, stop_on_eos=False))
    assert "max_new_tokens 100 cut to 32" in capsys.readouterr().err and len(ids[0]) == 32


def test_fill_mask_candidates_sorted_with_probabilities(tok):
    gen = TextGenerator(tiny_model("mlm"), tok)
    result = gen.fill_mask("The <mask> and the <mask>.", top_k=4)
    assert len(result) == 2
    for i, candidates in enumerate(result):
        probs = [c["score"] for c in candidates]
        assert len(candidates) == 4 and probs == sorted(probs, reverse=True)
        assert all(0 < p <= 1 for p in probs)
        for c in candidates:  # the pipeline's fields: the filled sequence holds the candidate, the other mask stays
            assert c["token_str"] == tok.decode([c["token"]])  # as the pipeline gives it: spaces kept
            assert c["sequence"].count("<mask>") == 1
    single = gen.fill_mask("The <mask> of Denmark.", top_k=2)[0][0]
    assert single["sequence"] == tok.decode(tok.encode("The ") + [single["token"]] + tok.encode(" of Denmark."))
    with pytest.raises(ValueError, match="no <mask> token"):
        gen.fill_mask("nothing to fill")
    with pytest.raises(ValueError, match="masked LM"):
        gen.generate("To be")


def test_reference_004_python_snippet_runs_as_adapted(tmp_path):
    """Reference 004's Python API lines, with the three changes docs/inference.md names: the model from
    Transformer.from_checkpoint, the tokenizer from AutoTokenizer on an export (or a run directory),
    and GenerationConfig's use_cache (honoured)."""
    transformers = pytest.importorskip("transformers")
    import checkpoint
    from convert import to_hf
    from tests.helpers.tiny_models import save_checkpoint
    tok = tiny_tokenizer(str(tmp_path))
    path = save_checkpoint(str(tmp_path / "run"), tiny_model(seed=6), tok)
    export = to_hf(path, str(tmp_path / "hf"), say=lambda *_: None)
    with pytest.raises(RuntimeError, match="Unexpected key"):  # the reference's line: a checkpoint is not a state dict
        tiny_model(seed=0).load_state_dict(torch.load(path, weights_only=True))

    # ---- the reference's lines, adapted ----
    from transformers import AutoTokenizer
    from model import Transformer
    from model.text_generator import TextGenerator
    from model.generation import GenerationConfig

    model = Transformer.from_checkpoint(path)
    tokenizer = AutoTokenizer.from_pretrained(export)
    generator = TextGenerator(model, tokenizer)
    gen_config = GenerationConfig(do_sample=True, temperature=0.8, top_k=50, top_p=0.9, max_new_tokens=20,
                                  repetition_penalty=1.2, use_cache=True, seed=3)
    result = generator.generate("中国", gen_config)
    pieces = []
    streamed = generator.generate("长江、", gen_config, stream=True, callback=pieces.append)
    results = generator.batch_generate(["中国", "长江、", "你好"], gen_config)
    history = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！有什么可以帮助你的吗？"},
               {"role": "user", "content": "介绍一下中国"}]
    response = generator.chat(history, gen_config)
    # ---- end ----

    assert all(torch.equal(v, tiny_model(seed=6).state_dict()[k]) for k, v in model.state_dict().items())
    ours = TextGenerator(model, checkpoint.tokenizer_of(checkpoint.load_checkpoint(path)))
    assert result == ours.generate("中国", gen_config) and result
    assert "".join(pieces) == streamed == ours.generate("长江、", gen_config)
    assert results == ours.batch_generate(["中国", "长江、", "你好"], gen_config)
    assert isinstance(response, str)
    no_cache = GenerationConfig(**{**gen_config.__dict__, "use_cache": False})
    assert generator.generate("中国", no_cache) == result
    # A run directory's tokenizer.json (no sidecar files: this project's own roles) serves as well.
    from_run_dir = TextGenerator(model, AutoTokenizer.from_pretrained(str(tmp_path / "run")))
    assert from_run_dir.generate("中国", gen_config) == result
