"""Writes the transformers reference fixture for alloy's CLIP (issue 6), where transformers is
installed (the GPU machine; nothing here needs a GPU). Not run in CI: CI checks against the files
this writes, once they are committed.

    python3 make_clip_fixture.py OUT_DIR     (e.g. tests/fixtures/clip_transformers)

OUT_DIR receives:
  model/config.json, model/model.safetensors   a small randomly initialised CLIPModel, as
                                               save_pretrained writes it
  model/vocab.json, model/merges.txt           a small byte-level BPE vocabulary for CLIPTokenizer
  texts.json                                   the texts, and the ids CLIPTokenizer gives them
                                               (padding to 16 tokens, truncation)
  io.safetensors                               pixels [4, 3, 28, 28] (fixed), ids [n, 16], and
                                               CLIPModel's logits_per_image, image_embeds and
                                               text_embeds on them (f32, eager attention)
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

TEXTS = [
    "a photo of the digit 7.",
    "A blurry PHOTO of a T-shirt!",
    "a photo of a  sneaker,   in grey",
    "an image of the number zero 0",
    "digits: 0123456789 and émigré",  # numbers one by one; a non-ASCII letter
    "it's a dog's ankle boot",         # the 's contraction rule
    "",                                # empty text: start and end tokens only
    "word " * 20,                      # longer than the context: truncated, ends in end-of-text
]


def bytes_to_unicode():
    """The byte -> printable character table of GPT-2 / CLIP's byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def make_vocabulary(folder):
    """256 byte symbols, the same with the end-of-word mark, merges learned from the texts' words
    (most frequent pair first), and the two special tokens, in CLIP's order."""
    byte_char = bytes_to_unicode()
    base = list(byte_char.values())
    vocab = base + [c + "</w>" for c in base]
    words = {}
    corpus = " ".join(TEXTS + ["a photo of a digit zero one two three four five six seven eight nine",
                               "t-shirt trouser pullover dress coat sandal shirt sneaker bag ankle boot"])
    for word in corpus.lower().split():
        symbols = tuple(byte_char[b] for b in word.encode("utf-8"))
        symbols = symbols[:-1] + (symbols[-1] + "</w>",)
        words[symbols] = words.get(symbols, 0) + 1
    merges = []
    for _ in range(120):
        pairs = {}
        for symbols, count in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] = pairs.get(pair, 0) + count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        vocab.append(best[0] + best[1])
        merged = {}
        for symbols, count in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = count
        words = merged
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return len(vocab)


def main():
    out = Path(sys.argv[1])
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    vocab_size = make_vocabulary(model_dir)
    tokenizer = CLIPTokenizer(str(model_dir / "vocab.json"), str(model_dir / "merges.txt"))
    encoded = tokenizer(TEXTS, padding="max_length", max_length=16, truncation=True, return_tensors="np")
    ids = encoded["input_ids"].astype(np.int64)
    (out / "texts.json").write_text(json.dumps({"texts": TEXTS, "ids": ids.tolist()}, ensure_ascii=False, indent=1))

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, hidden_act="quick_gelu",
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=40, intermediate_size=56, num_hidden_layers=3, num_attention_heads=5,
                           image_size=28, patch_size=7, num_channels=3, hidden_act="gelu"),
        projection_dim=24, logit_scale_init_value=2.0)
    config._attn_implementation = "eager"
    model = CLIPModel(config).eval()
    with torch.no_grad():  # move the layer norms off their (1, 0) initialisation
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(model_dir, safe_serialization=True)

    pixels = torch.linspace(-1, 1, 4 * 3 * 28 * 28).reshape(4, 3, 28, 28).sin()
    with torch.no_grad():
        output = model(pixel_values=pixels, input_ids=torch.from_numpy(ids))
    save_file({"pixels": pixels.numpy(), "ids": ids,
               "logits_per_image": output.logits_per_image.numpy(),
               "image_embeds": output.image_embeds.numpy(), "text_embeds": output.text_embeds.numpy()},
              str(out / "io.safetensors"), metadata={"format": "pt"})
    print(f"make_clip_fixture: wrote {out} (vocabulary of {vocab_size} tokens, {len(TEXTS)} texts)")


if __name__ == "__main__":
    main()
