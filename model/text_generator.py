"""Text in, text out: TextGenerator wraps a model and a tokenizer for generation, streaming, batches,
chat and fill-mask. The tokenizer is this project's (data.tokenizer.Tokenizer, or anything with its
encode, decode, decode_bytes, eos_id, pad_id, start_id, mask_id) or a transformers tokenizer, which
data.hf_tokenizer.as_tokenizer turns into ours (the same `tokenizers` pipeline and special tokens)."""
import codecs
import sys
from typing import Callable, List, Optional

import torch

from model.generation import GenerationConfig, generate_tokens

CHAT_ROLES = {"user": "User", "assistant": "Assistant", "system": "System"}


def _print_piece(piece: str) -> None:
    print(piece, end="", flush=True)


class StreamDecoder:
    """Turns tokens into text pieces without ever emitting half a UTF-8 character: bytes of a
    character split over several byte-level tokens are held back until it is complete."""

    def __init__(self, tokenizer):
        from data.hf_tokenizer import as_tokenizer
        self.tokenizer = as_tokenizer(tokenizer)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self.decoder.decode(self.tokenizer.decode_bytes([token]))

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True)


class TextGenerator:
    def __init__(self, model, tokenizer, compiled: bool = False):
        """compiled: decode through the compiled step (model.generation.compiled_step): faster once
        built, which takes seconds to a minute per batch size and cache length.
        tokenizer: ours, or a transformers one (AutoTokenizer.from_pretrained of an export)."""
        from data.hf_tokenizer import as_tokenizer
        self.model, self.tokenizer, self.compiled = model.eval(), as_tokenizer(tokenizer), compiled
        self.max_seq_len = model.config.max_seq_len
        if self.tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(f"the tokenizer has {self.tokenizer.vocab_size} tokens and the model only "
                             f"{model.config.vocab_size} embedding rows: not this model's tokenizer")

    # ---- helpers -------------------------------------------------------------------------------
    def _budget(self, config: GenerationConfig, warn: bool = True):
        """(room for the prompt, new tokens): both share the context of max_seq_len positions."""
        if config.max_new_tokens < self.max_seq_len:
            return self.max_seq_len - config.max_new_tokens, config.max_new_tokens
        room = self.max_seq_len // 2  # more new tokens asked than the context holds: keep half for the prompt
        if warn:
            print(f"warning: max_new_tokens {config.max_new_tokens} cut to {self.max_seq_len - room}: prompt and "
                  f"new tokens share a context of {self.max_seq_len}", file=sys.stderr)
        return room, self.max_seq_len - room

    def _cut(self, ids: List[int], room: int) -> List[int]:
        """The prompt's ids, cut from the left (with a warning) to fit `room`; never empty."""
        if len(ids) > room:
            print(f"warning: prompt of {len(ids)} tokens cut to its last {room} to fit the context of "
                  f"{self.max_seq_len}", file=sys.stderr)
            ids = ids[-room:]
        return ids or [self.tokenizer.start_id]  # an empty prompt: what a document follows in training

    def _require_causal(self):
        if not self.model.config.causal:
            raise ValueError("this checkpoint is a masked LM: it fills masks (--fill_mask), it does not generate")

    # ---- generation ------------------------------------------------------------------------------
    def _run(self, prompt: str, config: GenerationConfig, on_piece=None) -> List[int]:
        """Generate for one prompt; on_piece(text) gets each complete piece and may return True to stop."""
        self._require_causal()
        room, max_new = self._budget(config)
        ids = self._cut(self.tokenizer.encode(prompt), room)
        config = GenerationConfig(**{**config.__dict__, "max_new_tokens": max_new})
        on_token = None
        if on_piece is not None:
            decoder = StreamDecoder(self.tokenizer)

            def on_token(_row, token):
                piece = decoder.push(token)
                return bool(piece) and bool(on_piece(piece))
        tokens = generate_tokens(self.model, [ids], config, self.tokenizer.eos_id, self.tokenizer.pad_id, on_token,
                                 self.compiled)[0]
        if on_piece is not None:
            tail = decoder.flush()
            if tail:
                on_piece(tail)
        return tokens

    def generate(self, prompt: str, config: Optional[GenerationConfig] = None, stream: bool = False,
                 callback: Optional[Callable[[str], None]] = None) -> str:
        """The continuation of `prompt`. With stream=True each piece of text goes to `callback`
        (default: printed) as soon as it is complete; the pieces join to the returned text."""
        emit = callback or _print_piece

        def on_piece(piece):
            emit(piece)
            return False
        tokens = self._run(prompt, config or GenerationConfig(), on_piece if stream else None)
        return self.tokenizer.decode(tokens)

    def batch_generate(self, prompts: List[str], config: Optional[GenerationConfig] = None) -> List[str]:
        """Continuations of several prompts in one batched, left-padded pass."""
        return [self.tokenizer.decode(ids) for ids in self.batch_generate_ids(prompts, config)]

    def batch_generate_ids(self, prompts: List[str], config: Optional[GenerationConfig] = None) -> List[List[int]]:
        """batch_generate's new token ids (eos not included), for callers that count tokens."""
        self._require_causal()
        config = config or GenerationConfig()
        if not prompts:
            return []
        room, max_new = self._budget(config)
        ids = [self._cut(self.tokenizer.encode(p), room) for p in prompts]
        config = GenerationConfig(**{**config.__dict__, "max_new_tokens": max_new})
        return generate_tokens(self.model, ids, config, self.tokenizer.eos_id, self.tokenizer.pad_id,
                               compiled=self.compiled)

    # ---- chat ------------------------------------------------------------------------------------
    @staticmethod
    def render_chat(history: List[dict]) -> str:
        """'User: ...' / 'Assistant: ...' lines, ending with 'Assistant:' for the model to continue."""
        lines = [f"{CHAT_ROLES.get(turn['role'], turn['role'].capitalize())}: {turn['content']}" for turn in history]
        return "\n".join(lines + ["Assistant:"])

    def trim_history(self, history: List[dict], config: GenerationConfig) -> List[dict]:
        """Drop the oldest turns until the rendered conversation fits beside the new tokens."""
        room = self._budget(config, warn=False)[0]
        history = list(history)
        while len(history) > 1 and len(self.tokenizer.encode(self.render_chat(history))) > room:
            history.pop(0)
        return history

    def chat(self, history: List[dict], config: Optional[GenerationConfig] = None, stream: bool = False,
             callback: Optional[Callable[[str], None]] = None) -> str:
        """The assistant's next reply: one line, ending at eos or at the newline that would start
        the next turn. Streamed pieces never include that newline."""
        config = config or GenerationConfig()
        emit = (callback or _print_piece) if stream else (lambda piece: None)
        reply = []

        def on_piece(piece):
            head, newline, _ = piece.partition("\n")
            if not reply:
                head = head.lstrip()  # the space after "Assistant:" is not part of the reply
            if head:
                reply.append(head)
                emit(head)
            return bool(newline)
        self._run(self.render_chat(self.trim_history(history, config)), config, on_piece)
        return "".join(reply).strip()

    # ---- masked LM -------------------------------------------------------------------------------
    @torch.inference_mode()
    def fill_mask(self, text: str, top_k: int = 5) -> List[List[dict]]:
        """For each mask token in `text` (the tokenizer's own: <mask>, [MASK]), the top_k candidates,
        best first, with the fields of transformers' fill-mask pipeline: score, token (id),
        token_str, and sequence (the text with that mask filled; other masks stay as they are)."""
        if self.model.config.causal:
            raise ValueError("this checkpoint is a causal LM: it generates (--prompt), it does not fill masks")
        ids = self.tokenizer.encode(text)
        if getattr(self.tokenizer, "framing", "eos") == "cls_sep":  # BERT-style models read [CLS] text [SEP]
            ids = self.tokenizer.frame(ids)
        if len(ids) > self.max_seq_len:
            raise ValueError(f"text of {len(ids)} tokens is longer than the context ({self.max_seq_len})")
        where = [i for i, t in enumerate(ids) if t == self.tokenizer.mask_id]
        if not where:
            raise ValueError(f"no {self.tokenizer.mask_token} token in the text to fill")
        device = next(self.model.parameters()).device
        logits = self.model(torch.tensor([ids], device=device)).logits[0, where].float()
        probs = torch.softmax(logits, dim=-1)
        top = torch.topk(probs, min(top_k, probs.shape[-1]), dim=-1)
        pad = self.tokenizer.pad_id if getattr(self.tokenizer, "roles", {}).get("pad") else None
        results = []
        for position, ts, ps in zip(where, top.indices.tolist(), top.values.tolist()):
            candidates = []
            for t, p in zip(ts, ps):
                filled = list(ids)
                filled[position] = t
                if pad is not None:  # the pipeline leaves padding out of the sequence
                    filled = [i for i in filled if i != pad]
                sequence = self.tokenizer.decode(filled, skip_special_tokens=len(where) == 1)
                # token_str as the pipeline gives it: the token's own text, its leading space kept
                candidates.append({"score": p, "token": t, "token_str": self.tokenizer.decode([t]),
                                   "sequence": sequence})
            results.append(candidates)
        return results
