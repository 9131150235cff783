"""The teacher's questionnaires, verbatim from the VLM-AD paper (docs/facts.md section 5), and the label sets.

This is the only place the prompt text lives. `PROMPT_VERSION` is bumped by hand whenever the text or the
way it is asked changes; `prompt_hash(name)` hashes the exact text sent, and both go into every cache key
of the annotation store, so a changed prompt can never be served an answer to the old one.

Two separate requests per frame (the paper asks Q1 and Q2 separately):
    P1 = [C1, Q1-1, Q1-2, Q1-3]  freeform: current action, future action, reasoning  -> A_c, A_f, A_r
    P2 = [C2, Q2-1, Q2-2, Q2-3]  structured: control, turn, lane action from fixed lists
"""

from __future__ import annotations

import hashlib

PROMPT_VERSION = "vlmad-p-1"  # bump when any text below or its assembly changes

C1 = ("This is the front-view image of the ego vehicle. The red line indicates the future trajectory, no "
      "line suggests stopping or slowing down. When explaining the reasoning, please focus on the camera "
      "image and the surrounding context rather than referencing the plotted trajectory.")
Q1_1 = "Please describe the ego vehicle's current actions."
Q1_2 = "Please predict the ego vehicle's future actions."
Q1_3 = "Please explain the reasoning of current and future action."
C2 = ("This is the front-view image of the ego vehicle. The red line indicates the future trajectory, no "
      "line suggests stopping or slowing down.")
Q2_1 = ("Please describe the ego vehicle's action from the control action list: "
        "{go straight, move slowly, stop, reverse}.")
Q2_2 = ("Please describe the ego vehicle's action from the turn action list: "
        "{turn left, turn right, turn around, none}.")
Q2_3 = ("Please describe the ego vehicle's action from the lane action list: {change lane to the left, "
        "change lane to the right, merge into the left lane, merge into the right lane, none}.")

P1 = (C1, Q1_1, Q1_2, Q1_3)
P2 = (C2, Q2_1, Q2_2, Q2_3)
PROMPTS = {"P1": P1, "P2": P2}  # request name -> [context, question, question, question]

# Label sets (the index is the class id used by the action head and the feature store).
CONTROL_LABELS = ("go straight", "move slowly", "stop", "reverse")
TURN_LABELS = ("turn left", "turn right", "turn around", "none")
LANE_LABELS = ("change lane to the left", "change lane to the right", "merge into the left lane",
               "merge into the right lane", "none")
ACTION_KINDS = ("control", "turn", "lane")  # order of the 3 action targets everywhere
ACTION_LABELS = {"control": CONTROL_LABELS, "turn": TURN_LABELS, "lane": LANE_LABELS}
TEXT_KINDS = ("current", "future", "reasoning")  # A_c, A_f, A_r: order of the 3 text targets everywhere


def prompt_text(name: str) -> str:
    """The user message of request `name` ("P1" or "P2"): the context, then the numbered questions.

    The same text is sent whether or not the server accepts structured outputs (the JSON schema travels
    in `response_format`, not in the text), so one cache key covers both and the parser reads both.
    """
    if name not in PROMPTS:
        raise KeyError(f"unknown prompt {name!r}; known: {sorted(PROMPTS)}")
    ctx, *qs = PROMPTS[name]
    return "\n".join([ctx] + [f"{i}. {q}" for i, q in enumerate(qs, 1)])


def prompt_hash(name: str) -> str:
    """Short SHA-256 of the version and the exact text of request `name` (part of every cache key)."""
    return hashlib.sha256(f"{PROMPT_VERSION}\n{name}\n{prompt_text(name)}".encode()).hexdigest()[:16]


def response_schema(name: str) -> dict:
    """JSON schema for OpenAI structured outputs: an enum per action (P2), three strings (P1)."""
    if name == "P2":
        props = {k: {"type": "string", "enum": list(ACTION_LABELS[k])} for k in ACTION_KINDS}
    elif name == "P1":
        props = {k: {"type": "string"} for k in TEXT_KINDS}
    else:
        raise KeyError(f"unknown prompt {name!r}")
    return {
        "name": f"vlmad_{name.lower()}",
        "strict": True,
        "schema": {"type": "object", "properties": props, "required": list(props),
                   "additionalProperties": False},
    }
