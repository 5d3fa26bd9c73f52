"""Judges for open-ended answers: `Judge.score(question, reference, prediction) -> float in [0, 1]`.

`MatchJudge` (the default) needs nothing: 1.0 when the normalised reference equals the prediction
(`exact`) or appears inside it (`contains`). `OpenAIJudge` asks a chat model behind any
OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, Ollama...) for a 0-5 grade, as
Video-ChatGPT-style evaluations do, using only the standard library. Any object with a `name`
and this `score` method can be passed to `run_eval`; `--judge module:factory` loads one.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import string
import time
import urllib.error
import urllib.request
from typing import Protocol, runtime_checkable

from .errors import JudgeError


@runtime_checkable
class Judge(Protocol):
    """Grades an open-ended prediction against the reference answer."""

    name: str  # recorded with every score, so results of different judges are never mixed up

    def score(self, question: str, reference: str, prediction: str) -> float:
        """A grade in [0, 1] (1 = fully correct)."""
        ...


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, articles dropped, spaces collapsed (SQuAD-style)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def exact_match(reference: str, prediction: str) -> bool:
    return normalise(reference) == normalise(prediction)


def contains_match(reference: str, prediction: str) -> bool:
    """Whether the normalised reference occurs in the prediction on word boundaries."""
    ref, pred = normalise(reference), normalise(prediction)
    return bool(ref) and f" {ref} " in f" {pred} "


class MatchJudge:
    """String matching, no model: `mode` "contains" (default) or "exact"."""

    def __init__(self, mode: str = "contains"):
        if mode not in ("contains", "exact"):
            raise JudgeError(f"Match judge mode must be 'contains' or 'exact', got {mode!r}.")
        self.mode = mode
        self.name = f"match-{mode}"

    def score(self, question: str, reference: str, prediction: str) -> float:
        match = contains_match if self.mode == "contains" else exact_match
        return float(match(reference, prediction))


JUDGE_SYSTEM = ("You grade answers to questions about videos. Compare the predicted answer with the correct "
                "answer and judge whether it is correct in meaning; wording may differ. Reply with only a JSON "
                'object such as {"score": 4}, where score is an integer from 0 (wrong) to 5 (fully correct).')


class OpenAIJudge:
    """A chat model behind an OpenAI-compatible `/chat/completions` endpoint grades each answer 0-5.

    base_url: e.g. "https://api.openai.com/v1" or "http://127.0.0.1:8000/v1"; api_key_env: the
    environment variable holding the key (unset = no Authorization header, as local servers need);
    timeout_s: per request; retries: extra attempts after a network error or HTTP 429/5xx.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                 timeout_s: float = 60.0, retries: int = 2):
        if not re.match(r"^https?://[^/\s]+", base_url or ""):
            raise JudgeError(f"Judge URL must start with http:// or https://, got {base_url!r}.")
        if not model:
            raise JudgeError("The OpenAI-compatible judge needs a model name (--judge-model).")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env = model, api_key_env
        self.timeout_s, self.retries = timeout_s, retries
        self.name = f"openai:{model}"

    def score(self, question: str, reference: str, prediction: str) -> float:
        user = f"Question: {question}\nCorrect answer: {reference}\nPredicted answer: {prediction}"
        body = {"model": self.model, "temperature": 0,
                "messages": [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]}
        reply = self._post(body)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise JudgeError(f"The judge at {self.url} replied without choices[0].message.content.") from exc
        return parse_grade(str(content), self.url)

    def _post(self, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env or "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode()
        attempt = 0
        while True:
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                # rate limits and server errors pass; a 4xx other than 429 is our request's fault
                if exc.code not in (429, 500, 502, 503, 504) or attempt >= self.retries:
                    raise JudgeError(f"The judge at {self.url} answered HTTP {exc.code} ({exc.reason}).") from exc
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt >= self.retries:
                    reason = getattr(exc, "reason", exc)
                    raise JudgeError(f"The judge at {self.url} could not be reached ({reason}).") from exc
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise JudgeError(f"The judge at {self.url} replied with something that is not JSON.") from exc
            time.sleep(min(8.0, 0.5 * 2**attempt))  # back off before retrying: 0.5 s, 1 s, 2 s...
            attempt += 1


def parse_grade(content: str, source: str = "the judge") -> float:
    """A 0-5 grade in a judge's reply ({"score": 4}, or a bare number) mapped to [0, 1]."""
    grade: object = None
    found = re.search(r"\{.*\}", content, re.S)
    if found:
        try:
            grade = json.loads(found.group(0)).get("score")
        except (json.JSONDecodeError, AttributeError):
            grade = None
    if grade is None:
        bare = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*", content)
        grade = float(bare.group(1)) if bare else None
    if isinstance(grade, bool) or not isinstance(grade, int | float) or not 0 <= grade <= 5:
        raise JudgeError(f"The reply of {source} holds no score from 0 to 5: {content[:80]!r}.")
    return float(grade) / 5.0


def make_judge(name: str = "match", url: str | None = None, model: str | None = None,
               api_key_env: str = "OPENAI_API_KEY") -> Judge:
    """A judge by CLI name: "match" / "exact" (string matching), "openai" (needs url and model),
    or "package.module:factory" (called with no arguments, must return a Judge)."""
    if name in ("match", "contains"):
        return MatchJudge("contains")
    if name == "exact":
        return MatchJudge("exact")
    if name == "openai":
        if not url:
            raise JudgeError("The openai judge needs --judge-url, an OpenAI-compatible base URL such as "
                             "http://127.0.0.1:8000/v1.")
        return OpenAIJudge(url, model or "", api_key_env)
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            judge = getattr(importlib.import_module(module), attr)()
        except (ImportError, AttributeError) as exc:
            raise JudgeError(f"Judge {name!r} could not be loaded ({exc}).") from exc
        if not isinstance(judge, Judge):
            raise JudgeError(f"Judge {name!r} has no name and score(question, reference, prediction).")
        return judge
    raise JudgeError(f"Unknown judge {name!r}; use match, exact, openai or package.module:factory.")
