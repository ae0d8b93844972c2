"""Build tests/fixtures/tokenizer: a small byte-level BPE tokenizer with the real DeepSeek-R1-Distill
special tokens, pad = eos, a BOS added on encode, and a chat template written by us that renders the
same format as the real one (generation prompt `<｜Assistant｜><think>\\n`, assistant content cut at
`</think>`). Trained on the repo's sample data so English and Chinese text tokenize to sane lengths.

    python scripts/build_tokenizer_fixture.py     # rewrites tests/fixtures/tokenizer/
"""
import json
import pathlib

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "tokenizer"
VOCAB_SIZE = 2048  # small enough for a fast CPU model, large enough that words are a few tokens

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
SPECIAL_TOKENS = [EOS, BOS, "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"]  # the real distills' set
# In the real tokenizer.json only BOS and EOS are "special": the turn markers and <think>, </think> are added tokens
# that decoding keeps, so `decode(..., skip_special_tokens=True)` (TRL's completions, 04's answers) still shows
# </think> (deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B, tokenizer.json, ids 151644-151649).
KEPT_WHEN_DECODING = ["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"]

# Our own template, rendering the same text as DeepSeek's: bos, optional system text, user turns,
# assistant turns with everything up to the last </think> dropped, and the <think>\n generation prompt.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] }}{% endif %}{% endfor %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{ '<｜Assistant｜>' + content + eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)


def training_text():
    for name in ("medical_o1_sft.json", "medical_o1_sft_Chinese.json"):
        for row in json.loads((ROOT / "data" / "sample" / name).read_text(encoding="utf-8")):
            yield from (row["Question"], row["Complex_CoT"], row["Response"])
    for items in json.loads((ROOT / "data" / "sample" / "eval_data.json").read_text(encoding="utf-8")).values():
        for item in items:
            yield item["question"] + "\n" + "\n".join(f"{k}. {v}" for k, v in item["options"].items())


def build():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(training_text(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # add_bos_token=true, as in the real tokenizer_config: encoding adds one BOS in front.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=EOS,
        model_max_length=16384, clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    OUT.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(OUT))
    saved = json.loads((OUT / "tokenizer.json").read_text(encoding="utf-8"))
    for token in saved["added_tokens"]:
        token["special"] = token["content"] not in KEPT_WHEN_DECODING
    (OUT / "tokenizer.json").write_text(json.dumps(saved, ensure_ascii=False, indent=2), encoding="utf-8")
    print(f"wrote {OUT} ({len(fast)} tokens)")


if __name__ == "__main__":
    build()
