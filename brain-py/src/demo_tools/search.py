"""BM25 full-text search over a small in-memory corpus.

The index is built once at startup; a query touches only the postings of its
own terms, so searching the bundled corpus takes microseconds and the demo
measures the sidecar, not the tool.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

K1 = 1.5
"""Term-frequency saturation: how quickly repeated terms stop adding score."""

B = 0.75
"""Length normalisation: how much long documents are penalised."""

TITLE_WEIGHT = 2
"""A title term counts as this many occurrences in the body."""

SNIPPET_CHARS = 240

_STOPWORDS_TEXT = """
    a about above after again all also an and any are as at be because been before being
    between both but by can could did do does doing down during each few for from further
    had has have having he her here hers him his how i if in into is it its itself just
    me more most my no nor not of off on once only or other our out over own same she
    should so some such than that the their them then there these they this those through
    to too under until up very was we were what when where which while who whom why will
    with would you your
"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())
"""Words too common to say anything about a document."""

_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _fold(text: str) -> str:
    """Lower-cases and strips accents, so "São" matches "sao"."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _stem(word: str) -> str:
    """A deliberately tiny plural stemmer: "breakers" -> "breaker", "queries" -> "query"."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    """Lower-case word stems of ``text`` without stopwords."""
    return [_stem(w) for w in _WORD.findall(_fold(text)) if w not in STOPWORDS]


@dataclass(frozen=True, slots=True)
class Document:
    """One searchable document."""

    id: str
    title: str
    text: str


@dataclass(frozen=True, slots=True)
class Hit:
    """A ranked result."""

    id: str
    title: str
    snippet: str
    score: float


class Bm25Index:
    """Okapi BM25 over title and text of each document."""

    def __init__(self, documents: Iterable[Document]) -> None:
        self._docs = list(documents)
        self._postings: dict[str, list[tuple[int, int]]] = {}
        self._lengths: list[int] = []
        for number, doc in enumerate(self._docs):
            terms = Counter(tokenize(doc.text))
            for term in tokenize(doc.title):
                terms[term] += TITLE_WEIGHT
            self._lengths.append(sum(terms.values()))
            for term, count in terms.items():
                self._postings.setdefault(term, []).append((number, count))
        self._avg_length = sum(self._lengths) / len(self._lengths) if self._lengths else 0.0

    def __len__(self) -> int:
        return len(self._docs)

    def _idf(self, term: str) -> float:
        n = len(self._postings.get(term, ()))
        # The "+1" variant (as in Lucene) keeps idf positive for common terms.
        return math.log(1 + (len(self._docs) - n + 0.5) / (n + 0.5))

    def search(self, query: str, limit: int) -> list[Hit]:
        """The ``limit`` best documents for ``query``; only those matching a term."""
        terms = set(tokenize(query))
        scores: dict[int, float] = {}
        for term in terms:
            idf = self._idf(term)
            for number, tf in self._postings.get(term, ()):
                norm = K1 * (1 - B + B * self._lengths[number] / self._avg_length)
                scores[number] = scores.get(number, 0.0) + idf * tf * (K1 + 1) / (tf + norm)
        ranked = sorted(scores.items(), key=lambda item: (-item[1], self._docs[item[0]].id))
        return [
            Hit(
                id=self._docs[number].id,
                title=self._docs[number].title,
                snippet=_snippet(self._docs[number].text, terms),
                score=round(score, 4),
            )
            for number, score in ranked[:limit]
        ]


def _snippet(text: str, terms: set[str]) -> str:
    """The sentence sharing the most terms with the query, cut to :data:`SNIPPET_CHARS`."""
    sentences = _SENTENCE_END.split(text)
    best = max(sentences, key=lambda s: len(terms.intersection(tokenize(s))))
    if len(best) <= SNIPPET_CHARS:
        return best
    return best[: SNIPPET_CHARS - 1].rsplit(" ", 1)[0] + "…"


def load_corpus(jsonl: bytes) -> list[Document]:
    """Parses one JSON object per line with ``id``, ``title`` and ``text``."""
    docs: list[Document] = []
    for line in jsonl.splitlines():
        if line.strip():
            row = orjson.loads(line)
            docs.append(Document(id=str(row["id"]), title=str(row["title"]), text=str(row["text"])))
    return docs
