"""Stop strings checked cheaply: only after tokens that can complete one.

A stop string that was not in a row's text before its newest token and is in it afterwards must end inside the
text that token adds, so its last character is in that token's text. A token id can therefore complete a stop
string only if its own decoded text holds the last character of some stop string, or it decodes to a partial
character (byte-level tokens that end mid UTF-8 sequence, shown as U+FFFD) and some stop string is not ASCII (a
completed multi-byte character is never an ASCII one). Those ids are found once per
tokenizer and stop list (one decode of the vocabulary); at every step a set lookup per row decides whether the
row's tail has to be decoded at all. Rows that do get checked are checked exactly as before (decode of the last
tokens, substring test), so outputs are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Stop-string checks for one tokenizer and one list of stop strings.

    Args:
        tokenizer: the HF tokenizer that decodes the generated ids.
        stops: the stop strings (non-empty list).
    """

    def __init__(self, tokenizer, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.window = max((len(s) for s in self.stops), default=0) + 8
        finals = {s[-1] for s in self.stops}
        # A partial character can only become part of a non-ASCII character, never an ASCII one.
        partial = any(not s.isascii() for s in self.stops)
        n = len(tokenizer)
        texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=True)
        # Some tokenizers (SentencePiece) drop a leading space at the start of a text: also read each token after
        # an ordinary one.
        lead = tokenizer("a", add_special_tokens=False)["input_ids"][:1]
        if lead:
            skip = len(tokenizer.decode(lead, skip_special_tokens=True))
            after = tokenizer.batch_decode([lead + [i] for i in range(n)], skip_special_tokens=True)
            texts = [t + a[skip:] for t, a in zip(texts, after)]
        self.candidates = frozenset(
            i for i, t in enumerate(texts) if any(c in t for c in finals) or (partial and "\ufffd" in t)
        )

    def hit(self, ids: list[int]) -> bool:
        """Whether the text of `ids` (a row's tokens so far, the newest last) now contains a stop string."""
        if not self.stops or ids[-1] not in self.candidates:
            return False
        tail = self.tokenizer.decode(ids[-self.window :], skip_special_tokens=True)
        return any(s in tail for s in self.stops)

    def cut(self, text: str) -> str:
        """`text` cut before the first stop string it contains."""
        return text[: min(text.find(s) for s in self.stops if s in text)]
