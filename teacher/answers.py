"""Reading the teacher's answers: structured actions (P2) to canonical labels, freeform (P1) to A_c, A_f, A_r.

`parse_structured` accepts what VLMs actually write: a JSON object (possibly in a code fence), "Label:
value" fields (one per line, or several on one line separated by ". ; | ,", with ":", "=" or " - "),
numbered answers ("1. go straight", "Q2-2: none", "(3) none", inline "1) .. 2) .. 3) .."),
or prose ("The ego vehicle goes straight with no turn and no lane change."). It applies the paper's merges
("turn slightly left" -> "turn left", "shift slightly to the right" -> "change lane to the right", ...),
is case and punctuation insensitive, and never guesses: a part that names two different labels, a
negated label ("does not turn left"), or an out-of-list answer gives None for that part.

The runner treats an answer with any None part as unreadable: it asks again and, when the retries are
spent, records it as failed/partial with the raw text - a missing label is never turned into "none".
"""

from __future__ import annotations

import json
import re
from typing import Any

from teacher.prompts import ACTION_KINDS, ACTION_LABELS, TEXT_KINDS

# ----------------------------------------------------------------------------------------------------
# Label vocabulary: canonical labels, their inflections and the paper's merges.
# Patterns run on normalised text (lower case, punctuation -> spaces, single spaces).
# ----------------------------------------------------------------------------------------------------
_V = {  # verb forms
    "go": r"(?:go|goes|going|went|proceed|proceeds|proceeding|continue|continues|continuing|"
          r"drive|drives|driving)",
    "move": r"(?:move|moves|moving|drive|drives|driving|proceed|proceeds|proceeding)",
    "stop": r"(?:stop|stops|stopping|stopped|come to a stop|coming to a stop|comes to a stop)",
    "reverse": r"(?:reverse|reverses|reversing|back up|backs up|backing up)",
    "turn": r"(?:turn|turns|turning|make a|makes a|making a)",
    "change": r"(?:change|changes|changing)",
    "merge": r"(?:merge|merges|merging)",
    "shift": r"(?:shift|shifts|shifting)",
}
_LEFT, _RIGHT = "left", "right"

_PATTERNS: dict[str, list[tuple[str, str]]] = {
    "control": [
        (rf"\b{_V['go']} straight( ahead)?\b", "go straight"),
        (r"\bstraight( ahead)?\b", "go straight"),
        (rf"\b{_V['move']} slowly\b", "move slowly"),
        (r"\bslowly\b", "move slowly"),
        (rf"\b{_V['stop']}\b(?! (?:sign|signs|line|light|lights|signal))", "stop"),
        (rf"\b{_V['reverse']}\b", "reverse"),
    ],
    "turn": [
        (rf"\b{_V['turn']} (?:slightly |a slight |slight )?{_LEFT}( turn)?\b", "turn left"),
        (rf"\b{_V['turn']} (?:slightly |a slight |slight )?{_RIGHT}( turn)?\b", "turn right"),
        (r"\b(?:slight )?left turn\b", "turn left"),
        (r"\b(?:slight )?right turn\b", "turn right"),
        (rf"\b{_V['turn']} around\b|\bu turn\b|\buturn\b", "turn around"),
        (r"\bno turn(?:s|ing)?\b|\bnot turning\b|\bno turn action\b|"
         r"\bturn(?:ing)? action (?:is |would be |will be |should be )?none\b", "none"),
    ],
    "lane": [
        (rf"\b{_V['change']} lanes? to the {_LEFT}\b|\blane change to the {_LEFT}\b|"
         rf"\b{_V['change']} (?:in)?to the {_LEFT} lane\b|\b{_V['shift']} slightly to the {_LEFT}\b|"
         rf"\b{_V['change']} lanes? {_LEFT}\b", "change lane to the left"),
        (rf"\b{_V['change']} lanes? to the {_RIGHT}\b|\blane change to the {_RIGHT}\b|"
         rf"\b{_V['change']} (?:in)?to the {_RIGHT} lane\b|\b{_V['shift']} slightly to the {_RIGHT}\b|"
         rf"\b{_V['change']} lanes? {_RIGHT}\b", "change lane to the right"),
        (rf"\b{_V['merge']} (?:in)?to the {_LEFT} lane\b|\b{_V['merge']} {_LEFT}\b",
         "merge into the left lane"),
        (rf"\b{_V['merge']} (?:in)?to the {_RIGHT} lane\b|\b{_V['merge']} {_RIGHT}\b",
         "merge into the right lane"),
        (r"\bno lane (?:change|changes|action|actions|change action)\b|\bnot changing lanes?\b|"
         r"\bstays? in (?:its|the|the same|the current) lane\b|"
         r"\bkeeps? (?:its|the|the same|the current) lane\b|"
         r"\blane action (?:is |would be |will be |should be )?none\b",  # "its lane action is 'none'"
         "none"),
    ],
}
_COMPILED = {k: [(re.compile(p), lab) for p, lab in v] for k, v in _PATTERNS.items()}
# A bare "none" only counts inside a part already known to be about that kind (turn or lane).
_NONE_WORDS = re.compile(r"^(?:none|no|no action|nothing|n a|na|null)$")
_NEG = re.compile(r"\b(?:not|no|never|without|doesn t|does not|isn t|won t|don t|cannot|can t)\s+"
                  r"(?:\w+\s+){0,2}$")
_KIND_KEYS = {
    "control": re.compile(r"\bcontrol\b"),
    "turn": re.compile(r"\bturn(?:ing)? action\b|\bturn$|^turn\b(?! (?:left|right|around))"),
    "lane": re.compile(r"\blane(?: action)?\b"),
}


def normalise(text: str) -> str:
    """Lower case, apostrophes and punctuation to spaces, whitespace collapsed."""
    t = text.lower().replace("\u2019", "'")
    t = re.sub(r"[^a-z0-9]+", " ", t)
    return re.sub(r"\s+", " ", t).strip()


def match_label(kind: str, text: str, allow_bare_none: bool = True) -> str | None:
    """The single canonical `kind` label named in `text`, or None when it names none, several, or a
    negated one. `allow_bare_none` lets a bare "none"/"no" answer mean the "none" label (turn, lane)."""
    t = normalise(_strip_echoed_lists(text))
    if not t:
        return None
    if allow_bare_none and "none" in _labels(kind) and _NONE_WORDS.match(t):
        return "none"
    found: set[str] = set()
    spans: list[tuple[int, int]] = []
    for rx, lab in _COMPILED[kind]:
        for m in rx.finditer(t):
            if any(m.start() < e and s < m.end() for s, e in spans) and lab in found:
                continue  # the same label matched twice by overlapping patterns
            if any(m.start() >= s and m.end() <= e for s, e in spans):
                continue  # inside a longer match of another pattern ("go straight" then "straight")
            if lab != "none" and _NEG.search(t[: m.start()]):
                return None  # "does not turn left": never read a negated label as that label
            found.add(lab)
            spans.append((m.start(), m.end()))
    if allow_bare_none and "none" in _labels(kind) and re.search(r"\bnone\b", t):
        found.add("none")
    return found.pop() if len(found) == 1 else None


def _labels(kind: str) -> tuple[str, ...]:
    return ACTION_LABELS[kind]


def _strip_echoed_lists(text: str) -> str:
    """Remove an echoed option list "{go straight, move slowly, stop, reverse}" (it names every label)."""
    return re.sub(r"\{[^{}]*,[^{}]*,[^{}]*\}", " ", text)


# ----------------------------------------------------------------------------------------------------
# Structure: JSON, label lines, numbered answers
# ----------------------------------------------------------------------------------------------------
def find_json_object(text: str) -> dict | None:
    """The first JSON object in `text` (code fences and surrounding prose allowed), or None."""
    dec = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = dec.raw_decode(text[m.start():])
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def _json_list(text: str) -> list | None:
    """The answer as a JSON list when it is exactly one (code fences allowed), else None."""
    t = re.sub(r"^```(?:json)?|```$", "", text.strip()).strip()
    if not t.startswith("["):
        return None
    try:
        obj = json.loads(t)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, list) else None


def _flatten(obj: dict) -> list[tuple[str, str]]:
    """(key, string value) pairs of a JSON object, nested objects included ({"answer": {...}})."""
    out: list[tuple[str, str]] = []
    for k, v in obj.items():
        if isinstance(v, dict):
            out += _flatten(v)
        elif isinstance(v, str):
            out.append((str(k), v))
    return out


def _kind_of_key(key: str, kinds: dict[str, re.Pattern]) -> str | None:
    k = normalise(key)
    hits = [kind for kind, rx in kinds.items() if rx.search(k)]
    return hits[0] if len(hits) == 1 else None


_LINE_LABEL = re.compile(r"^\s*(?P<key>[A-Za-z][A-Za-z _\-/()]{0,40}?)\s*[:=]\s*(?P<val>.*)$")
_NUMBERED = re.compile(r"^\s*(?:\(?q?\s*[12]?\s*[-_.]?\s*)?\(?(?P<num>[1-3])\s*[.):](?:\s+|$)(?P<val>.*)$",
                       re.I)
_INLINE_NUM = re.compile(r"(?:^|\s)\(?([1-3])[.)]\s+")


def _clean_line(line: str) -> str:
    return re.sub(r"^[\s>*#`\-\u2022]+|[*`]+", "", line).strip()


# An action field named inside a line: "Turn: ...", "turn action:None", "Lane action - none" (a dash with a
# space after it; "->" is not a separator). Used to split "Control: a. Turn: b. Lane: c." on one line.
_FIELD = re.compile(r"(?:^|(?<=[\s;|,.]))(?P<key>(?:control|turn|lane)(?:[ _]actions?)?(?:[ _]list)?)"
                    r"\s*(?:[:=]|-(?=\s))\s*", re.I)


def _split_fields(line: str) -> list[str]:
    """One "key: value" line per action field of `line` when it names several fields or starts with one
    ("Turn action - none;"); otherwise the line unchanged. Separators (; | , .) between fields are dropped."""
    hits = list(_FIELD.finditer(line))
    if not hits or (len(hits) < 2 and hits[0].start() != 0):
        return [line]
    out = [line[: hits[0].start()].strip(" ;|,")] if hits[0].start() > 0 else []
    for m, nxt in zip(hits, hits[1:] + [None]):
        val = line[m.end(): nxt.start() if nxt is not None else len(line)].strip().rstrip(";|,").strip()
        out.append(f"{m.group('key')}: {val}")
    return [x for x in out if x]


def split_parts(text: str, kinds: tuple[str, ...], key_rx: dict[str, re.Pattern]) -> dict[str, str] | None:
    """Split an answer into one text part per kind using label lines or numbered answers.

    Returns None when the answer has no recognisable structure (then it is read as prose).
    A kind whose part appears twice with different content gets both joined (the matcher then sees
    both and refuses an ambiguous result).
    """
    parts: dict[str, list[str]] = {}
    lines = [_clean_line(x) for x in text.splitlines()]
    lines = [x for x in lines if x]
    if kinds == ACTION_KINDS:  # "Control: go straight. Turn: none. Lane: none" on one line -> three lines
        lines = [piece for x in lines for piece in _split_fields(x)]
    # One line holding "1) ... 2) ... 3) ..." -> three lines.
    if len(lines) == 1 and len(_INLINE_NUM.findall(lines[0])) >= 2:
        pieces = _INLINE_NUM.split(lines[0])
        lines = [f"{num}. {val.strip()}" for num, val in zip(pieces[1::2], pieces[2::2])]
    last_kind: str | None = None
    for line in lines:
        kind, val = None, None
        m = _NUMBERED.match(line)
        if m:
            val = m.group("val")
            kind = kinds[int(m.group("num")) - 1]
            m2 = _LINE_LABEL.match(val)  # "1. Control action: go straight"
            if m2 and _kind_of_key(m2.group("key"), key_rx):
                kind, val = _kind_of_key(m2.group("key"), key_rx), m2.group("val")
        else:
            m = _LINE_LABEL.match(line)
            if m and _kind_of_key(m.group("key"), key_rx):
                kind, val = _kind_of_key(m.group("key"), key_rx), m.group("val")
        if kind is None:
            if last_kind is not None and line and not parts[last_kind][-1]:
                parts[last_kind][-1] = line  # "Control action:" on one line, value on the next
            elif last_kind is not None and kinds == TEXT_KINDS:
                parts[last_kind].append(line)  # multi-line freeform answer
            continue
        parts.setdefault(kind, []).append(val.strip())
        last_kind = kind
    if not parts:
        return None
    return {k: " ".join(v).strip() for k, v in parts.items()}


# ----------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------
def parse_structured(text: str) -> dict[str, str | None]:
    """Canonical control / turn / lane labels of a P2 answer; None for any part that cannot be read."""
    out: dict[str, str | None] = {k: None for k in ACTION_KINDS}
    if not text or not text.strip():
        return out
    seq = _json_list(text)
    if seq is not None:  # ["go straight", "none", "none"]: by position, only with exactly 3 entries
        if len(seq) != len(ACTION_KINDS):
            return out
        return {k: match_label(k, v) if isinstance(v, str) else None for k, v in zip(ACTION_KINDS, seq)}
    obj = find_json_object(text)
    if obj is not None:
        for key, val in _flatten(obj):
            kind = _kind_of_key(key, _KIND_KEYS)
            if kind is None:
                continue
            if out[kind] is not None:  # the same kind twice in one object: refuse
                out[kind] = None
                continue
            out[kind] = match_label(kind, val)
        if any(v is not None for v in out.values()):
            return out
    parts = split_parts(text, ACTION_KINDS, _KIND_KEYS)
    if parts is not None:
        for kind in ACTION_KINDS:
            if kind in parts:
                out[kind] = match_label(kind, parts[kind])
        return out
    # Prose: each kind must be named exactly once; a bare "none" cannot be told apart between kinds.
    for kind in ACTION_KINDS:
        out[kind] = match_label(kind, text, allow_bare_none=False)
    return out


_TEXT_KEYS = {
    "current": re.compile(r"\bcurrent\b|^a c$|^ac$"),
    "future": re.compile(r"\bfuture\b|\bpredict|^a f$|^af$"),
    "reasoning": re.compile(r"\breason|\bexplain|\bexplanation\b|^a r$|^ar$|\bwhy\b"),
}


def split_freeform(text: str) -> dict[str, str | None]:
    """A_c, A_f, A_r of a P1 answer (keys `prompts.TEXT_KINDS`); None for a part that is not there.

    Reads JSON, labelled lines ("Current action: ...", "Reasoning: ..."), numbered answers, or
    exactly three paragraphs. Anything else gives all None (never a guessed split).
    """
    out: dict[str, str | None] = {k: None for k in TEXT_KINDS}
    if not text or not text.strip():
        return out
    obj = find_json_object(text)
    if obj is not None:
        for key, val in _flatten(obj):
            kind = _kind_of_key(key, _TEXT_KEYS)
            if kind and val.strip() and out[kind] is None:
                out[kind] = _tidy(val)
        if any(v is not None for v in out.values()):
            return out
    parts = split_parts(text, TEXT_KINDS, _TEXT_KEYS)
    if parts is not None:
        for kind in TEXT_KINDS:
            if parts.get(kind):
                out[kind] = _tidy(parts[kind])
        return out
    paras = [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    if len(paras) == 3:
        return {k: _tidy(p) for k, p in zip(TEXT_KINDS, paras)}
    return out


def _tidy(s: str) -> str | None:
    s = re.sub(r"[*`#]+", "", s)
    s = re.sub(r"\s+", " ", s).strip()
    return s or None


def word_count(s: str | None) -> int:
    """Words in an answer (Table 7 statistic): whitespace-separated tokens that contain a letter/digit."""
    return 0 if not s else sum(1 for w in s.split() if re.search(r"[A-Za-z0-9]", w))


def is_complete(prompt_name: str, parsed: dict[str, Any]) -> bool:
    """True when every part of a parsed answer was read (P1: 3 texts, P2: 3 labels)."""
    keys = TEXT_KINDS if prompt_name == "P1" else ACTION_KINDS
    return all(parsed.get(k) is not None for k in keys)


def parse_answer(prompt_name: str, text: str) -> dict[str, str | None]:
    """`split_freeform` for P1, `parse_structured` for P2."""
    return split_freeform(text) if prompt_name == "P1" else parse_structured(text)
