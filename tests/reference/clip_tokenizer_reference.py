#!/usr/bin/env python3
"""Checks alloy's CLIP tokenizer against an independent Python one.

The Python side follows Hugging Face's CLIPTokenizer without ftfy (its BasicTokenizer cleaning,
then OpenAI's pattern through the `regex` module, GPT-2's byte map, and the rank-ordered BPE of
OpenAI's simple_tokenizer.py), written here from those sources' documented behaviour, not from
alloy's C++. The case folder (written by `alloy_clip_tests "write the CLIP tokenizer case"`) holds
vocab.json, merges.txt and case.json: {"context": n, "texts": [...], "ids": [[...], ...]} where the
ids are alloy's, padded to the context. Exit status 0 when every text's ids agree exactly.

    clip_tokenizer_reference.py CASE_DIR
"""
import json
import pathlib
import sys
import unicodedata

import regex


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def is_control(ch):
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch).startswith("C")


def is_whitespace(ch):
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def is_cjk(cp):
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def basic_clean(text):
    """BasicTokenizer(strip_accents=False, do_split_on_punc=False).tokenize, joined by spaces (no NFC)."""
    out = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or is_control(ch):
            continue
        out.append(" " if is_whitespace(ch) else ch)
    spaced = []
    for ch in "".join(out):
        spaced.append(f" {ch} " if is_cjk(ord(ch)) else ch)
    return " ".join(token.lower() for token in "".join(spaced).split())


class Tokenizer:
    pattern = regex.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)

    def __init__(self, folder):
        self.encoder = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        lines = (folder / "merges.txt").read_text(encoding="utf-8").strip().split("\n")[1:49152 - 256 - 2 + 1]
        self.ranks = {tuple(line.split()): i for i, line in enumerate(lines)}
        self.byte_encoder = bytes_to_unicode()
        self.cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            bigram = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if bigram not in self.ranks:
                break
            first, second = bigram
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        self.cache[token] = " ".join(word)
        return self.cache[token]

    def encode(self, text, context):
        unk = self.encoder["<|endoftext|>"]
        ids = [self.encoder["<|startoftext|>"]]
        for piece in self.pattern.findall(basic_clean(text)):
            piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder.get(symbol, unk) for symbol in self.bpe(piece).split(" "))
        ids.append(self.encoder["<|endoftext|>"])
        if len(ids) > context:
            ids = ids[:context]
            ids[-1] = self.encoder["<|endoftext|>"]
        return ids + [self.encoder["<|endoftext|>"]] * (context - len(ids))


def main():
    folder = pathlib.Path(sys.argv[1])
    case = json.loads((folder / "case.json").read_text(encoding="utf-8"))
    tokenizer = Tokenizer(folder)
    failures = 0
    for text, theirs in zip(case["texts"], case["ids"]):
        ours = tokenizer.encode(text, case["context"])
        if ours != theirs:
            failures += 1
            print(f"MISMATCH {text!r}\n  python: {ours}\n  alloy:  {theirs}")
    if len(case["texts"]) != len(case["ids"]) or not case["texts"]:
        sys.exit("case.json: texts and ids differ in count, or are empty")
    if failures:
        sys.exit(f"{failures} of {len(case['texts'])} texts tokenized differently")
    print(f"{len(case['texts'])} texts: alloy's ids equal the Python tokenizer's "
          f"(vocabulary of {len(tokenizer.encoder)} symbols, {len(tokenizer.ranks)} merges)")


if __name__ == "__main__":
    main()
