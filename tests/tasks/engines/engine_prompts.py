"""Conversations shared by the engine tests: prompts of different lengths, so order and padding show."""
QUESTIONS = [
    "What is 2+2?",
    "Write a haiku about the sea, please, with vivid imagery and at least one color.",
    "Name a fruit.",
]
CONVS = [[{"role": "user", "content": q}] for q in QUESTIONS]

# A judge-like conversation continued after a pre-filled assistant text, for continuation scoring.
JUDGE = [{"role": "user", "content": "Which letter comes first in the alphabet, A or B?"},
         {"role": "assistant", "content": "The answer is"}]
