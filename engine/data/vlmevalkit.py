"""VLMEvalKit's rule-based scoring, re-implemented quirk for quirk: ``--scorer vlmevalkit``.

priorscope's own scorer (:mod:`priorscope.engine.data.scoring`) reads some replies differently on
purpose (engine/data/COMPATIBILITY.md lists every class and why). This module scores exactly as
VLMEvalKit's rules do, for numbers comparable with results computed there. Written from
VLMEvalKit's source (open-compass/VLMEvalKit, read, not copied):

- ``vlmeval/utils/matching_util.py`` (commit 18fc37a): ``can_infer_option``,
  ``can_infer_text``, ``can_infer``. Run without the ``VERBOSE`` environment variable, as
  evaluations normally are, so the "A might be a quantifier" check is off. Quirks kept on
  purpose: letters are matched case-sensitively as whole tokens after the characters
  ``.()[],:;!*#{}`` become spaces; exactly one option letter must occur, anywhere; the article
  "A" counts as option A; option texts are matched as lowercase substrings; four refusal
  phrases give 'Z'.
- ``vlmeval/smp/misc.py``: ``process_punctuation`` (the VQA evaluation's ``processPunctuation``,
  with its ``(?!<=\\d)`` lookahead typo and the ``re.UNICODE`` passed as the ``count`` argument).
- ``vlmeval/dataset/utils/vqa_eval.py``: ``_process_digit_article`` (number words none..ten,
  articles, contractions), ``process_answer``, the ``vqa_score``, ``accuracy``,
  ``relaxed_accuracy`` and ``anls`` methods of ``process_line`` and ``hit_calculate``.
- ``vlmeval/dataset/utils/yorn.py``: ``YOrN_Extraction``.

In VLMEvalKit a multiple-choice reply the rules cannot read goes to an LLM judge, or, under the
``exact_matching`` policy, is scored as 'Z' (wrong); here both False and 'Z' mean "no answer",
scored 0. :func:`score_reply` picks the method per rule as VLMEvalKit picks it per dataset.
"""

from __future__ import annotations

import copy
import re
import string
from collections.abc import Iterable, Mapping, Sequence

# -- multiple choice: vlmeval/utils/matching_util.py -----------------------------------------
REJECT_TO_ANSWER = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)


def can_infer_option(answer: str, choices: Mapping[str, str]) -> str | bool:
    """Return the letter found as a lone token, 'Z' for a refusal, else False."""
    if "Failed to obtain answer via API" in answer:
        return False
    for err in REJECT_TO_ANSWER:
        if err in answer:
            return "Z"

    def count_choice(
        splits: list[str], choices: Iterable[str], prefix: str = "", suffix: str = ""
    ) -> int:
        return sum(1 for c in choices if prefix + c + suffix in splits)

    answer_mod = copy.copy(answer)
    for c in ".()[],:;!*#{}":
        answer_mod = answer_mod.replace(c, " ")
    splits = [x.strip() for x in answer_mod.split()]
    count = count_choice(splits, choices)
    if count == 1:
        for ch in choices:
            if ch in splits:
                return ch
    elif count == 0 and count_choice(splits, {"Z", ""}) == 1:
        return "Z"
    return False


def can_infer_text(answer: str, choices: Mapping[str, str]) -> str | bool:
    """Return the only option whose lowercased text is a substring of the answer, else False."""
    answer = answer.lower()
    lowered = {}
    for k in choices:
        assert k in string.ascii_uppercase
        lowered[k] = str(choices[k]).lower()
    cands = [k for k in lowered if lowered[k] in answer]
    if len(cands) == 1:
        return cands[0]
    return False


def can_infer(answer: object, choices: Mapping[str, str]) -> str | bool:
    """Return VLMEvalKit's rule-based reading of a multiple-choice reply."""
    answer = str(answer)
    copt = can_infer_option(answer, choices)
    return copt if copt else can_infer_text(answer, choices)


def choice_letter(answer: str, options: Sequence[str]) -> str | None:
    """Return the letter VLMEvalKit reads, None for no answer (False or 'Z')."""
    choices = {string.ascii_uppercase[i]: o for i, o in enumerate(options)}
    found = can_infer(answer, choices)
    return found if isinstance(found, str) and found != "Z" else None


# -- normalisation: vlmeval/smp/misc.py and vlmeval/dataset/utils/vqa_eval.py ----------------
PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@"]
PUNCT += ["`", ",", "?", "!"]
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: a lookahead, not a lookbehind


def process_punctuation(in_text: str) -> str:
    out_text = in_text
    for p in PUNCT:
        if (p + " " in in_text or " " + p in in_text) or (
            re.search(COMMA_STRIP, in_text) is not None
        ):
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    return PERIOD_STRIP.sub("", out_text, int(re.UNICODE))  # sic: count=32


MANUAL_MAP = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = ["a", "an", "the"]
_CONTRACTION_PAIRS = (
    "aint ain't|arent aren't|cant can't|couldve could've|couldnt couldn't|"
    "couldn'tve couldn't've|couldnt've couldn't've|didnt didn't|doesnt doesn't|dont don't|"
    "hadnt hadn't|hadnt've hadn't've|hadn'tve hadn't've|hasnt hasn't|havent haven't|hed he'd|"
    "hed've he'd've|he'dve he'd've|hes he's|howd how'd|howll how'll|hows how's|Id've I'd've|"
    "I'dve I'd've|Im I'm|Ive I've|isnt isn't|itd it'd|itd've it'd've|it'dve it'd've|"
    "itll it'll|let's let's|maam ma'am|mightnt mightn't|mightnt've mightn't've|"
    "mightn'tve mightn't've|mightve might've|mustnt mustn't|mustve must've|neednt needn't|"
    "notve not've|oclock o'clock|oughtnt oughtn't|ow's'at 'ow's'at|'ows'at 'ow's'at|"
    "'ow'sat 'ow's'at|shant shan't|shed've she'd've|she'dve she'd've|she's she's|"
    "shouldve should've|shouldnt shouldn't|shouldnt've shouldn't've|"
    "shouldn'tve shouldn't've|somebody'd somebodyd|somebodyd've somebody'd've|"
    "somebody'dve somebody'd've|somebodyll somebody'll|somebodys somebody's|"
    "someoned someone'd|someoned've someone'd've|someone'dve someone'd've|"
    "someonell someone'll|someones someone's|somethingd something'd|"
    "somethingd've something'd've|something'dve something'd've|somethingll something'll|"
    "thats that's|thered there'd|thered've there'd've|there'dve there'd've|"
    "therere there're|theres there's|theyd they'd|theyd've they'd've|they'dve they'd've|"
    "theyll they'll|theyre they're|theyve they've|twas 'twas|wasnt wasn't|wed've we'd've|"
    "we'dve we'd've|weve we've|werent weren't|whatll what'll|whatre what're|whats what's|"
    "whatve what've|whens when's|whered where'd|wheres where's|whereve where've|"
    "whod who'd|whod've who'd've|who'dve who'd've|wholl who'll|whos who's|whove who've|"
    "whyll why'll|whyre why're|whys why's|wont won't|wouldve would've|wouldnt wouldn't|"
    "wouldnt've wouldn't've|wouldn'tve wouldn't've|yall y'all|yall'll y'all'll|"
    "y'allll y'all'll|yall'd've y'all'd've|y'alld've y'all'd've|y'all'dve y'all'd've|"
    "youd you'd|youd've you'd've|you'dve you'd've|youll you'll|youre you're|youve you've"
)
CONTRACTIONS = dict(pair.split(" ") for pair in _CONTRACTION_PAIRS.split("|"))


def process_digit_article(in_text: str) -> str:
    out_text = []
    for word in in_text.lower().split():
        word = MANUAL_MAP.get(word, word)  # upstream's setdefault on a per-call dict
        if word not in ARTICLES:
            out_text.append(word)
    for word_id, word in enumerate(out_text):
        if word in CONTRACTIONS:
            out_text[word_id] = CONTRACTIONS[word]
    return " ".join(out_text)


def process_answer(answer: str) -> str:
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(answer))


# -- open-answer metrics: process_line and hit_calculate --------------------------------------
def vqa_score(prediction: str, answers: Sequence[str]) -> float:
    """Return the mean over golds of min(1, matching other golds / 3) (``vqa_score``)."""
    gts = [process_answer(x) for x in answers]
    pred = process_answer(prediction)
    match = []
    for current, _ in enumerate(gts):
        others = [item for i, item in enumerate(gts) if i != current]
        match.append(min(1, float(len([x for x in others if x == pred])) / 3))
    return sum(match) / len(match)


def accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Return the mean of case-insensitive exact matches (``accuracy``: GQA, OCRVQA)."""
    pred = prediction.strip()
    match = [1.0 if x.strip().lower() == pred.strip().lower() else 0.0 for x in answers]
    return sum(match) / len(match)


def _to_float(text: str) -> float | None:
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correctness(target: str, prediction: str, max_relative_change: float = 0.05) -> bool:
    prediction_float = _to_float(str(prediction))
    target_float = _to_float(str(target))
    if prediction_float is not None and target_float:
        return abs(prediction_float - target_float) / abs(target_float) <= max_relative_change
    return str(prediction).lower() == str(target).lower()


def relaxed_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Return the best relaxed correctness over golds (ChartQA's ``max``).

    As in ``process_line``, the reply is passed as ``target`` and each gold as ``prediction``
    (sic): the change is relative to the reply, and a reply of 0 is compared as text.
    """
    pred = prediction.strip()
    return float(max(relaxed_correctness(pred, x) for x in answers))


def levenshtein_distance(s1: str, s2: str) -> int:
    if len(s1) > len(s2):
        s1, s2 = s2, s1
    distances = list(range(len(s1) + 1))
    for i2, c2 in enumerate(s2):
        distances_ = [i2 + 1]
        for i1, c1 in enumerate(s1):
            if c1 == c2:
                distances_.append(distances[i1])
            else:
                distances_.append(1 + min((distances[i1], distances[i1 + 1], distances_[-1])))
        distances = distances_
    return distances[-1]


def anls_compute(groundtruth: str, prediction: str) -> float:
    gt_answer = " ".join(groundtruth.strip().lower().split())
    det_answer = " ".join(prediction.strip().lower().split())
    dist = levenshtein_distance(gt_answer, det_answer)
    # sic: the lengths of the texts as given, not of the normalised ones the distance compares
    length = max(len(groundtruth.upper()), len(prediction.upper()))
    return 0.0 if length == 0 else float(dist) / float(length)


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Return DocVQA's ANLS hit: 1 - min distance, 0 when under the threshold."""
    best = 1 - min(anls_compute(x, prediction) for x in answers)
    return 0.0 if best < threshold else best


# -- yes/no: vlmeval/dataset/utils/yorn.py ---------------------------------------------------
def yorn_extraction(output: str) -> str:
    s = output.lower()
    words = process_punctuation(s).split()
    if "yes" in words and "no" not in words:
        return "Yes"
    if "yes" not in words and "no" in words:
        return "No"
    return "Unknown"


# -- one reply, as VLMEvalKit's dataset classes route it --------------------------------------
def score_reply(
    rule: str, reply: str, golds: Sequence[str], options: Sequence[str] = ()
) -> tuple[str | None, float, bool]:
    """Return (answer, score, extracted) of ``reply`` under one of ``scoring.RULES``.

    The answer of an open question is ``process_answer(reply)`` (None when that is empty).

    ``choice``: :func:`can_infer` (the letter, right when it is a gold letter). ``yes/no``:
    ``YOrN_Extraction`` against the gold. ``vqa``: ``vqa_score`` (the mean over golds of
    min(1, other matching golds / 3)) with several golds; with one gold ``accuracy``, as
    VLMEvalKit scores its single-answer sets (GQA, OCRVQA), since ``vqa_score`` gives 0 there.
    ``relaxed``: ChartQA's ``relaxed_accuracy``. ``anls``: DocVQA's ANLS.
    """
    if rule == "choice":
        letter = choice_letter(reply, options)
        return letter, float(letter is not None and letter in golds), letter is not None
    if rule == "yes/no":
        found = yorn_extraction(reply)
        if found == "Unknown":
            return None, 0.0, False
        said = found.lower()
        return said, float(said in {process_answer(g) for g in golds}), True
    # Open answers: the answer kept (what invariance and flips compare) is the reply as
    # VLMEvalKit's normaliser writes it, whichever metric scores it.
    open_said: str | None = process_answer(reply) or None
    if rule == "vqa":
        if len(golds) > 1:
            return open_said, vqa_score(reply, golds), bool(reply.strip())
        return open_said, accuracy(reply, golds), bool(reply.strip())
    if rule == "relaxed":
        return open_said, relaxed_accuracy(reply, golds), bool(reply.strip())
    if rule == "anls":
        return open_said, anls(reply, golds), bool(reply.strip())
    raise ValueError(f"Expected a scored rule (choice, yes/no, vqa, relaxed, anls). Got {rule!r}.")
