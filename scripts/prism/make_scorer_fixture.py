#!/usr/bin/env python3
"""Build the reference fixture for the Rust Prism answer scorer.

Writes tests/fixtures/prism/scorer_cases.jsonl: one JSON object per line,
{"kind", "content", "gold", "score"}, where

  kind    "math"  -> verify_math(content, f"${gold}$")
          "chart" -> max(verify_chart(content, sol, use_anls=False), verify_math(content, sol))
          "info"  -> max(verify_chart(content, sol, use_anls=True),  verify_math(content, sol))
  content the evaluation model's generated text
  gold    the dataset answer exactly as the f-string f"${gt}$" renders it; an InfoVQA
          list-of-answers gold is stored as the Python repr of the list ("['a', 'b']"),
          which is what str(list) gives and what process_line() literal-evals back
  score   the reference score (float) computed with math-verify, following the logic of
          InternLM/CapRL Prism_Evaluation/Eval_CapRL.py (verify_math / verify_chart), with
          relaxed accuracy and ANLS re-implemented here after VLMEvalKit's vqa_eval.py
          (which openrlhf's remote_rm/vqa_eval.py, imported by CapRL, derives from).

Usage (math-verify from PyPI, see tests/fixtures/prism/README.md):

  python3 -m venv /tmp/mvenv && /tmp/mvenv/bin/pip install math-verify==0.9.0
  /tmp/mvenv/bin/python scripts/prism/make_scorer_fixture.py            # writes the fixture
  /tmp/mvenv/bin/python scripts/prism/make_scorer_fixture.py --debug    # also dumps intermediates

Deterministic: fixed seed, no dict/set iteration order dependence, and it aborts if
math-verify reports a parse/compare timeout (a timeout would make a score depend on
machine speed).
"""

import argparse
import ast
import json
import logging
import os
import random
import re
import sys
from collections import Counter

from importlib.metadata import version

from math_verify import LatexExtractionConfig, parse, verify

SEED = 20250917
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
OUT_DIR = os.path.join(REPO, "tests", "fixtures", "prism")
OUT = os.path.join(OUT_DIR, "scorer_cases.jsonl")


# --------------------------------------------------------------------------------------
# Timeout guard: math-verify logs (and swallows) timeouts; they would make the fixture
# machine-dependent, so count them and refuse to write.
# --------------------------------------------------------------------------------------
class _TimeoutCounter(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.count = 0

    def emit(self, record):
        if "Timeout" in record.getMessage():
            self.count += 1


TIMEOUTS = _TimeoutCounter()
for _name in ("math_verify", "math_verify.parser", "math_verify.grader", "math_verify.utils"):
    logging.getLogger(_name).addHandler(TIMEOUTS)


# --------------------------------------------------------------------------------------
# Reference scorer (Eval_CapRL.py logic)
# --------------------------------------------------------------------------------------
ANSWER_RE = re.compile(r"</think>\s*<answer>.*?\\boxed{(.*)}.*?</answer>", re.DOTALL)


def math_parse(content):
    return parse(content, extraction_mode="first_match", extraction_config=[LatexExtractionConfig()])


def boxed_answer(content):
    matches = re.findall(ANSWER_RE, content)
    return matches[-1] if matches else ""


def verify_math(content, sol):
    gold_parsed = math_parse(sol)
    if not gold_parsed:
        return 1.0  # unparseable gold counts 1
    answer_parsed = boxed_answer(content)
    math_answer = math_parse(f"${answer_parsed}$")
    try:
        # NB: CapRL passes the prediction as verify()'s *gold* argument and the gold as its target.
        reward = max(float(verify(answer_parsed, gold_parsed)), float(verify(math_answer, gold_parsed)))
    except Exception:
        reward = 0.0
    return float(reward)


def _to_float(text):
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correctness(target, prediction, max_relative_change=0.05):
    """ChartQA relaxed accuracy: 5% relative to the target when both are numbers
    (a target of 0 falls back to the string test), else case-insensitive exact match."""
    prediction = str(prediction).strip()
    target = str(target).strip()
    prediction_float = _to_float(prediction)
    target_float = _to_float(target)
    if prediction_float is not None and target_float:
        return abs(prediction_float - target_float) / abs(target_float) <= max_relative_change
    return prediction.lower() == target.lower()


def levenshtein_distance(s1, s2):
    if len(s1) > len(s2):
        s1, s2 = s2, s1
    distances = range(len(s1) + 1)
    for i2, c2 in enumerate(s2):
        distances_ = [i2 + 1]
        for i1, c1 in enumerate(s1):
            if c1 == c2:
                distances_.append(distances[i1])
            else:
                distances_.append(1 + min((distances[i1], distances[i1 + 1], distances_[-1])))
        distances = distances_
    return distances[-1]


def anls_distance(groundtruth, prediction):
    """Normalized Levenshtein distance (0 = identical); strings lowercased, stripped and
    internal whitespace runs collapsed to one space; lengths in code points."""
    gt = " ".join(groundtruth.strip().lower().split())
    det = " ".join(prediction.strip().lower().split())
    length = max(len(gt), len(det))
    return 0.0 if length == 0 else float(levenshtein_distance(gt, det)) / float(length)


def gold_answers(ground_truth):
    """process_line(): a gold that evaluates to a Python list is a list of answers."""
    try:
        value = ast.literal_eval(ground_truth)
    except Exception:
        return [ground_truth]
    if isinstance(value, list):
        return value
    return [ground_truth]


def verify_chart(content, sol, use_anls=False):
    ground_truth = sol[1:-1]
    answers = gold_answers(ground_truth)
    answer_parsed = boxed_answer(content)
    try:
        student_answer = math_parse(f"${answer_parsed}$")[-1]
    except Exception:
        student_answer = ""
    if not isinstance(student_answer, str):
        # the original would then hit float(sympy) / .strip() on a sympy object
        raise TypeError(f"non-string student answer {student_answer!r}")
    reward = 0.0
    try:
        pre = float(student_answer)
        for scale in [1, 0.01, 100]:
            pred = str(scale * pre)
            reward = max(reward, float(max(relaxed_correctness(a, pred) for a in answers)))
    except (ValueError, IndexError):
        reward = float(max(relaxed_correctness(a, student_answer) for a in answers))
    if not use_anls:
        return float(reward)
    for a in answers:
        if not isinstance(a, str):
            raise TypeError("ANLS gold list must hold strings (the original crashes otherwise)")
    reward2 = 1 - min(anls_distance(a, student_answer) for a in answers)
    reward2 = 0.0 if reward2 < 0.5 else reward2
    return max(float(reward), float(reward2))


def score(kind, content, gold):
    sol = f"${gold}$"
    if kind == "math":
        return verify_math(content, sol)
    if kind == "chart":
        return max(verify_chart(content, sol, use_anls=False), verify_math(content, sol))
    if kind == "info":
        return max(verify_chart(content, sol, use_anls=True), verify_math(content, sol))
    raise ValueError(kind)


def debug_info(kind, content, gold):
    sol = f"${gold}$"
    ans = boxed_answer(content)
    gp = math_parse(sol)
    ap = math_parse(f"${ans}$")
    d = {
        "boxed": ans,
        "gold_parsed": [str(x) for x in gp],
        "answer_parsed": [str(x) for x in ap],
        "verify_math": verify_math(content, sol),
    }
    if kind != "math":
        d["verify_chart"] = verify_chart(content, sol, use_anls=(kind == "info"))
    return d


# --------------------------------------------------------------------------------------
# Case generation
# --------------------------------------------------------------------------------------
REASONS = [
    "The caption says the {obj} shows {n} {unit}. So the answer follows directly.",
    "From the description, the value for {obj} is read off the chart. Comparing the bars, {n} is the closest.",
    "Let me look at the caption. It mentions {obj} and gives the number {n}.",
    "The image contains a {obj}. Counting carefully, I get {n}.",
    "Step 1: find the {obj} in the caption.\nStep 2: read its value, {n} {unit}.\nStep 3: check the options.",
    "The question asks about the {obj}. According to the caption, it is {n}.",
    "Based on the caption, the {obj} has a label of {n}; the other entries are smaller.",
]
OBJS = ["bar for 2019", "largest slice", "triangle ABC", "red line", "table row for Japan",
        "angle at B", "circle", "legend entry", "x-axis label", "shaded region", "population of Canada"]
UNITS = ["units", "percent", "cm", "degrees", "million", "people", ""]
ANSWER_LEADS = ["", "The answer is ", "Final answer: ", "So the answer is ", "Therefore, ", "Answer: "]
ANSWER_TAILS = ["", ".", " .", "\n", " (rounded)", " based on the caption."]


def reasoning(rng):
    return rng.choice(REASONS).format(obj=rng.choice(OBJS), n=rng.randint(1, 99), unit=rng.choice(UNITS))


def wrap_standard(rng, x):
    sep1 = rng.choice([" ", "\n", "\n\n", "", "  "])
    inner_pad = rng.choice(["", " ", "\n"])
    return (f"<think>{reasoning(rng)}</think>{sep1}<answer>{inner_pad}{rng.choice(ANSWER_LEADS)}"
            f"\\boxed{{{x}}}{rng.choice(ANSWER_TAILS)}{inner_pad}</answer>")


# Malformed / tricky wrappers: name -> function(rng, x, alt) where alt is a different answer.
def w_no_think_close(rng, x, alt):
    return f"<think>{reasoning(rng)} <answer>\\boxed{{{x}}}</answer>"


def w_no_answer_open(rng, x, alt):
    return f"<think>{reasoning(rng)}</think> The answer is \\boxed{{{x}}}.</answer>"


def w_no_answer_tags(rng, x, alt):
    return f"<think>{reasoning(rng)}</think>\nThe answer is \\boxed{{{x}}}."


def w_no_answer_close(rng, x, alt):
    return f"<think>{reasoning(rng)}</think><answer>\\boxed{{{x}}}"


def w_no_boxed(rng, x, alt):
    return f"<think>{reasoning(rng)}</think> <answer>{x}</answer>"


def w_boxed_space(rng, x, alt):
    return f"<think>{reasoning(rng)}</think> <answer>\\boxed {{{x}}}</answer>"


def w_fbox(rng, x, alt):
    return f"<think>{reasoning(rng)}</think> <answer>\\fbox{{{x}}}</answer>"


def w_text_between(rng, x, alt):
    return f"<think>{reasoning(rng)}</think> Final: <answer>\\boxed{{{x}}}</answer>"


def w_no_think_at_all(rng, x, alt):
    return f"<answer>\\boxed{{{x}}}</answer>"


def w_two_boxed(rng, x, alt):
    return f"<think>{reasoning(rng)}</think> <answer>\\boxed{{{alt}}} or maybe \\boxed{{{x}}}</answer>"


def w_two_boxed_same(rng, x, alt):
    return f"<think>{reasoning(rng)}</think> <answer>\\boxed{{{x}}}, i.e. \\boxed{{{x}}}</answer>"


def w_boxed_in_think(rng, x, alt):
    return f"<think>At first I thought \\boxed{{{alt}}}. {reasoning(rng)}</think>\n<answer>\\boxed{{{x}}}</answer>"


def w_braces_after(rng, x, alt):
    return f"<think>{reasoning(rng)}</think> <answer>\\boxed{{{x}}} (see \\text{{caption}})</answer>"


def w_two_answer_blocks(rng, x, alt):
    return (f"<think>{reasoning(rng)}</think> <answer>\\boxed{{{alt}}}</answer>\n"
            f"<think>Wait, let me re-check.</think> <answer>\\boxed{{{x}}}</answer>")


def w_two_answers_one_think(rng, x, alt):
    return (f"<think>{reasoning(rng)}</think> <answer>\\boxed{{{alt}}}</answer> "
            f"<answer>\\boxed{{{x}}}</answer>")


def w_nested_boxed(rng, x, alt):
    return f"<think>{reasoning(rng)}</think> <answer>\\boxed{{\\boxed{{{x}}}}}</answer>"


def w_dollars(rng, x, alt):
    return f"<think>{reasoning(rng)}</think> <answer>$\\boxed{{{x}}}$</answer>"


def w_empty_boxed(rng, x, alt):
    return f"<think>{reasoning(rng)}</think> <answer>\\boxed{{}}</answer>"


def w_uppercase_tags(rng, x, alt):
    return f"<think>{reasoning(rng)}</think> <ANSWER>\\boxed{{{x}}}</ANSWER>"


def w_boxed_padded(rng, x, alt):
    return f"<think>{reasoning(rng)}</think> <answer>\\boxed{{ {x} }}</answer>"


def w_truncated(rng, x, alt):
    return f"<think>{reasoning(rng)} Let me compute the"


MALFORMED = [
    w_no_think_close, w_no_answer_open, w_no_answer_tags, w_no_answer_close, w_no_boxed,
    w_boxed_space, w_fbox, w_text_between, w_no_think_at_all, w_two_boxed, w_two_boxed_same,
    w_boxed_in_think, w_braces_after, w_two_answer_blocks, w_two_answers_one_think,
    w_nested_boxed, w_dollars, w_empty_boxed, w_uppercase_tags, w_boxed_padded, w_truncated,
]


def num_str(v):
    s = f"{v:.2f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def math_specs(rng):
    """(gold, [predicted boxed contents]) pairs, MathVista/MMMU style."""
    specs = []
    for _ in range(6):
        n = rng.randint(2, 180)
        specs.append((str(n), [str(n), f"{n}.0", str(n + 1), f"{n}\\text{{ cm}}", f"{n}^\\circ",
                               f"x={n}", f"\\text{{{n}}}", f"{n} \\mathrm{{cm}}", f"{n}°", f"{n}cm"]))
    for _ in range(4):
        v = rng.randint(11, 999) / 10
        s = num_str(v)
        specs.append((s, [s, f"{s}0", num_str(v + 0.1), num_str(v * 1.03), f"{s}\\%", f"\\approx {s}"]))
    for _ in range(3):
        n = rng.randint(1, 40)
        specs.append((f"-{n}", [f"-{n}", f"- {n}", f"−{n}", str(n), f"-{n}.0", f"({-n})"]))
    specs += [
        ("-2.5", ["-2.5", "-\\frac{5}{2}", "2.5", "-2.50"]),
        ("\\frac{1}{2}", ["0.5", "\\dfrac{1}{2}", "1/2", "\\frac{2}{4}", ".5", "\\frac12", "0.50", "\\tfrac{1}{2}"]),
        ("1/2", ["0.5", "\\frac{1}{2}", "1/2", "0.51"]),
        ("0.5", ["0.5", "\\frac{1}{2}", "1/2", ".5", "0.49"]),
        ("\\frac{3}{4}", ["\\frac{3}{4}", "0.75", "3/4", "\\dfrac{3}{4}", "\\frac{4}{3}", "0.7"]),
        ("\\frac{2}{3}", ["0.6667", "0.666667", "0.67", "\\frac{2}{3}", "2/3", "0.666666667"]),
        ("\\sqrt{2}", ["\\sqrt{2}", "\\sqrt2", "1.414", "1.41421356", "2^{1/2}", "\\sqrt{3}", "1.414214"]),
        ("2\\sqrt{3}", ["2\\sqrt{3}", "\\sqrt{12}", "3.464", "2 \\sqrt 3", "3.4641016"]),
        ("2\\pi", ["2\\pi", "6.28", "6.283185", "\\pi \\cdot 2", "2 \\pi", "6.2832", "\\pi"]),
        ("\\pi", ["\\pi", "3.14", "3.14159265", "\\pi r^2"]),
        ("4\\pi", ["4\\pi", "12.566", "4\\pi \\text{ cm}^2", "12.57"]),
        ("x=3", ["3", "x=3", "x = 3", "y=3", "4"]),
        ("3", ["x=3", "x = 3", "y=3", "3"]),
        ("y=2x+1", ["y=2x+1", "2x+1", "y = 1 + 2x", "y=2x-1"]),
        ("30", ["30^\\circ", "30^{\\circ}", "30 degrees", "30°", "\\frac{\\pi}{6}", "30"]),
        ("30^\\circ", ["30", "30^\\circ", "\\frac{\\pi}{6}", "30 degrees"]),
        ("60°", ["60", "60^\\circ", "60°"]),
        ("5\\text{ cm}", ["5", "5 cm", "5\\text{cm}", "5\\,\\text{cm}", "6\\text{ cm}"]),
        ("12 cm^2", ["12", "12 cm^2", "12\\text{ cm}^2", "12\\ \\mathrm{cm}^2"]),
        ("1234", ["1,234", "1{,}234", "1234", "1 234", "1234.0", "1.234"]),
        ("1,234", ["1234", "1,234", "1{,}234"]),
        ("45%", ["45", "0.45", "45\\%", "45%", "\\frac{45}{100}", "46%"]),
        ("45", ["45\\%", "45%", "0.45", "45"]),
        ("0.45", ["45\\%", "45%", "0.45", "45"]),
        ("12.5\\%", ["12.5", "0.125", "12.5\\%", "\\frac{1}{8}"]),
        ("\\{1,2\\}", ["1, 2", "\\{2,1\\}", "(1,2)", "[1,2]", "\\{1,2,3\\}", "1,2"]),
        ("(1,2)", ["(1,2)", "(1, 2)", "[1,2]", "\\{1,2\\}", "(2,1)"]),
        ("[0,1]", ["[0,1]", "0 \\le x \\le 1", "(0,1)", "[0, 1]"]),
        ("(2, 3)", ["(2,3)", "2 < x < 3", "x \\in (2,3)"]),
        ("2, 3", ["2,3", "3, 2", "2 \\text{ and } 3", "\\{2, 3\\}", "2"]),
        ("x^2 + 2x + 1", ["(x+1)^2", "x^2+2x+1", "x^2 + 1"]),
        ("e", ["e", "2.718", "2.71828183", "\\exp(1)"]),
        ("10:30", ["10:30", "\\frac{1}{3}", "1:3", "10 : 30"]),
        ("0", ["0", "0.0", "-0", "\\text{zero}", "0.001"]),
        ("0.0", ["0", "0.0"]),
        ("1e3", ["1000", "1e3", "10^3"]),
    ]
    letters = "ABCDE"
    for i in range(8):
        g = letters[i % 5]
        o = letters[(i + 2) % 5]
        specs.append((g, [g, f"({g})", f"{g}) {rng.randint(2, 90)}", f"\\text{{{g}}}", g.lower(), o,
                          f"{g}. {rng.randint(2, 90)} cm", f"\\text{{({g})}}", f"{g}:", f"Option {g}"]))
    specs.append(("(B)", ["B", "(B)", "b", "\\text{B}"]))
    specs.append(("B) 12", ["B", "B) 12", "12"]))
    specs += [
        ("Yes", ["Yes", "yes", "YES", "No", "\\text{Yes}", "\\text{yes}"]),
        ("No", ["No", "no", "Yes", "\\text{No}", "N"]),
        ("red", ["red", "Red", "blue", "\\text{red}", "r e d"]),
        ("triangle", ["triangle", "Triangle", "\\text{triangle}", "circle"]),
        ("Paris", ["Paris", "paris", "\\text{Paris}", "London"]),
    ]
    # golds math-verify cannot parse (empty list): scored 1 whatever the answer
    specs += [
        ("", ["5", "anything", ""]),
        (" ", ["3", "x"]),
        ("\\", ["1", "a"]),
        ("$", ["$", "5"]),
        ("\\boxed{}", ["2", ""]),
    ]
    return specs


def chart_specs(rng):
    specs = []
    for _ in range(12):
        n = rng.randint(3, 950)
        close = n + max(1, int(n * 0.04))
        far = n + max(1, int(n * 0.08)) + 1
        specs.append((str(n), [str(n), str(close), str(far), f"{n}.0", num_str(n / 100), f"{n * 100}",
                               f"{n}\\%", f"{n} \\text{{ million}}", f"\\text{{{n}}}", f"{n:,}" if n >= 1000 else f"{n}.00"]))
    for _ in range(8):
        v = rng.randint(5, 9999) / 100
        s = num_str(v)
        specs.append((s, [s, num_str(v * 1.045), num_str(v * 0.955), num_str(v * 1.06), num_str(v * 100),
                          num_str(v / 100), f"{s}%", f"\\frac{{{int(round(v * 100))}}}{{100}}"]))
    for _ in range(6):
        p = rng.randint(2, 98)
        specs.append((f"{p}%", [str(p), num_str(p / 100), f"{p}\\%", f"{p}%", str(p + 1), str(p + 5),
                                num_str((p + 3) / 100)]))
    for _ in range(3):
        n = rng.randint(1000, 99999)
        specs.append((str(n), [f"{n:,}", str(n), f"{n:,}".replace(",", "{,}"), str(int(n * 1.03))]))
        specs.append((f"{n:,}", [str(n), f"{n:,}", str(int(n * 1.03))]))
    for _ in range(3):
        n = rng.randint(2, 60)
        specs.append((f"-{n}", [f"-{n}", str(n), f"-{n + 1}", f"−{n}", f"-{n}.0"]))
    specs += [
        ("0", ["0", "0.0", "0.01", "\\text{0}"]),
        ("0.0", ["0", "0.0"]),
        ("0.5", ["0.5", "\\frac{1}{2}", "0.51", "50", "50\\%"]),
        ("0.51", ["0.5", "0.51", "51"]),
        ("2019", ["2019", "2,019", "2020", "2019.0"]),
        ("1.5", ["1.5", "\\frac{3}{2}", "1.55", "150%"]),
        ("23.5", ["23.5", "23.50", "\\approx 23.5", "23.5 \\text{ billion}", "$23.5"]),
        ("Yes", ["Yes", "yes", "No", "\\text{Yes}", "YES"]),
        ("No", ["No", "no", "\\text{no}", "Yes"]),
        ("Japan", ["Japan", "japan", "\\text{Japan}", "China", "Japan."]),
        ("United States", ["United States", "united states", "\\text{United States}", "USA", "United  States"]),
        ("Female", ["Female", "female", "Male", "\\text{Female}"]),
        ("2015", ["2015", "2016", "2015.0"]),
        ("Q3", ["Q3", "q3", "Q4", "3"]),
        ("[3, 5]", ["3", "5", "[3, 5]", "4"]),
        ("", ["5", "x"]),
    ]
    return specs


INFO_TEXT = [
    "New York", "social media", "Facebook", "climate change", "United Kingdom", "online shopping",
    "Millennials", "hand washing", "smartphone", "Germany", "breast cancer", "25-34 years",
    "wearing a mask", "São Paulo", "e-commerce", "red", "twitter", "cycling", "Tokyo", "renewable energy",
]


def typo(rng, s):
    if len(s) < 3:
        return s + "s"
    i = rng.randrange(len(s) - 1)
    op = rng.randrange(4)
    if op == 0:  # swap
        return s[:i] + s[i + 1] + s[i] + s[i + 2:]
    if op == 1:  # drop
        return s[:i] + s[i + 1:]
    if op == 2:  # insert
        return s[:i] + "x" + s[i:]
    return s[:i] + "z" + s[i + 1:]  # substitute


def info_specs(rng):
    specs = []
    for t in INFO_TEXT:
        words = t.split()
        preds = [t, t.lower(), t.upper(), typo(rng, t), typo(rng, typo(rng, t)), f"\\text{{{t}}}",
                 f"the {t}", t[: max(1, len(t) // 2)], "something else entirely"]
        if len(words) > 1:
            preds.append(words[-1])
            preds.append("  ".join(words))
        specs.append((t, preds))
    specs += [
        (repr(["New York", "NYC"]), ["NYC", "New York", "nyc", "New Yrok", "Boston"]),
        (repr(["12%", "12 percent"]), ["12", "12\\%", "0.12", "12 percent", "13"]),
        (repr(["yes"]), ["yes", "Yes", "no", "\\text{yes}"]),
        (repr(["social media", "social networks"]), ["social media", "social network", "Social Media", "media"]),
        (repr(["3", "three"]), ["3", "three", "Three", "4", "3.0"]),
    ]
    for _ in range(10):
        n = rng.randint(3, 990)
        specs.append((str(n), [str(n), str(n + 1), str(n + max(1, n // 10)), f"{n}\\%", num_str(n / 100)]))
    for _ in range(6):
        p = rng.randint(2, 98)
        specs.append((f"{p}%", [str(p), f"{p}\\%", num_str(p / 100), str(p + 2), f"{p} percent"]))
    specs += [
        ("1,200", ["1,200", "1200", "1.2k", "1 200"]),
        ("$2.5 billion", ["2.5 billion", "\\$2.5 billion", "$2.5 billion", "2.5"]),
        ("1 in 4", ["1 in 4", "25%", "1/4", "one in four"]),
        ("10:30", ["10:30", "10.30", "1/3"]),
        ("Yes", ["Yes", "yes", "Yess", "No"]),
        ("café", ["café", "cafe", "CAFÉ"]),
    ]
    return specs


def build_cases():
    rng = random.Random(SEED)
    cases = []
    for kind, specs in (("math", math_specs(rng)), ("chart", chart_specs(rng)), ("info", info_specs(rng))):
        for gold, preds in specs:
            for x in preds:
                if rng.random() < 0.82:
                    content = wrap_standard(rng, x)
                else:
                    alt = rng.choice([p for p in preds if p != x] or ["0"])
                    content = rng.choice(MALFORMED)(rng, x, alt)
                cases.append((kind, content, gold))
            # every spec also gets one deliberately broken answer for its gold answer
            alt = rng.choice(preds[1:] or ["0"])
            cases.append((kind, rng.choice(MALFORMED)(rng, preds[0], alt), gold))
    # Hand-written regex / greedy-capture edge cases (gold, content) for each kind.
    edge = [
        ("3", "<think>t</think><answer>\\boxed{3} and \\boxed{4}</answer>"),
        ("4", "<think>t</think><answer>\\boxed{3} and \\boxed{4}</answer>"),
        ("\\frac{3}{4}", "<think>t</think><answer>\\boxed{\\frac{3}{4}}</answer>"),
        ("\\frac{3}{4}", "<think>t</think><answer>\\boxed{\\frac{3}{4}} is {correct}</answer>"),
        ("2", "<think>t</think><answer>\\boxed{2}</answer><answer>\\boxed{5}</answer>"),
        ("5", "<think>t</think><answer>\\boxed{2}</answer><answer>\\boxed{5}</answer>"),
        ("2", "<think>a</think><answer>\\boxed{2}</answer>\n<think>b</think><answer>\\boxed{5}</answer>"),
        ("5", "<think>a</think><answer>\\boxed{2}</answer>\n<think>b</think><answer>\\boxed{5}</answer>"),
        ("7", "<think>x</think>\n\n<answer>\n\\boxed{7}\n</answer>"),
        ("7", "<think>x</think>\t<answer>\\boxed{7}</answer>"),
        ("7", "</think><answer>\\boxed{7}</answer>"),
        ("7", "<think>x</think><answer>\\boxed{7}</answer></answer>"),
        ("7", "<think>x</think><answer>\\boxed{7</answer>"),
        ("7", "<think>x</think><answer>\\boxed{{7}}</answer>"),
        ("7", "<think>x</think><answer>\\boxed{7}}</answer>"),
        ("7", "<think>x</think><answer>\\boxed{\\text{7}}</answer>"),
        ("7", "<think>x</think><answer>\\boxed{7} \\boxed{}</answer>"),
        ("7", "<think>x</think><answer>\\boxed{\\boxed{7}}</answer>"),
        ("A", "<think>x</think><answer>\\boxed{A}</answer>"),
        ("A", "<think>x</think><answer>\\boxed{\\text{A. } 5}</answer>"),
        ("\\frac{1}{2}", "<think>x</think><answer>\\boxed{\\frac{1}{2}} or \\boxed{0.5}</answer>"),
        ("\\{1, 2\\}", "<think>x</think><answer>\\boxed{1} and \\boxed{2}</answer>"),
        ("1, 2", "<think>x</think><answer>\\boxed{1}, \\boxed{2}</answer>"),
        ("12", "<think>x</think><answer>\\boxed{12</answer> oops }</answer>"),
        ("12", "<think>I think \\boxed{12}</think><answer>\\boxed{13}</answer>"),
        ("13", "<think>I think \\boxed{12}</think><answer>\\boxed{13}</answer>"),
        ("45%", "<think>x</think><answer>\\boxed{45\\%}</answer>"),
        ("45%", "<think>x</think><answer>\\boxed{45}\\%</answer>"),
        ("1234", "<think>x</think><answer>\\boxed{1,\\!234}</answer>"),
        ("Yes", "<think>x</think><answer>\\boxed{\\text{Yes}}.</answer>"),
        ("Yes", "<think>x</think><answer>Yes</answer>"),
        ("", "no tags at all"),
        ("", ""),
        ("5", ""),
    ]
    for kind in ("math", "chart", "info"):
        for gold, content in edge:
            cases.append((kind, content, gold))
    return cases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--debug", action="store_true", help="print intermediates for every case")
    args = ap.parse_args()

    cases = build_cases()
    rows, seen = [], set()
    for kind, content, gold in cases:
        key = (kind, content, gold)
        if key in seen:
            continue
        seen.add(key)
        s = score(kind, content, gold)
        rows.append({"kind": kind, "content": content, "gold": gold, "score": float(s)})
        if args.debug:
            print(json.dumps({"kind": kind, "gold": gold, "score": s, **debug_info(kind, content, gold)},
                             ensure_ascii=False))
    if TIMEOUTS.count:
        sys.exit(f"math-verify reported {TIMEOUTS.count} timeouts; refusing to write a machine-dependent fixture")

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")

    per_kind = Counter(r["kind"] for r in rows)
    dist = Counter()
    for r in rows:
        b = "1" if r["score"] == 1.0 else ("0" if r["score"] == 0.0 else "fractional")
        dist[(r["kind"], b)] += 1
    print(f"math-verify {version('math-verify')}, latex2sympy2_extended {version('latex2sympy2_extended')}, "
          f"sympy {version('sympy')}; "
          f"{len(rows)} cases -> {args.out}", file=sys.stderr)
    for k in ("math", "chart", "info"):
        print(f"  {k}: {per_kind[k]} (1: {dist[(k, '1')]}, 0: {dist[(k, '0')]}, "
              f"fractional: {dist[(k, 'fractional')]})", file=sys.stderr)


if __name__ == "__main__":
    main()
