"""Constrained decoding: the grammar a reply must follow, and a matcher per sequence.

The API side turns ``response_format`` and forced or strict tool calls into one grammar
(``reply_grammar``) and compiles it for the tokenizer (``compile_constraint``); rank 0's
sampler asks each sequence's matcher which tokens may come next and masks the others.
llguidance does the matching: it installs without torch and runs on Linux CPU and macOS.
"""

from refserver.constrain.grammar import Reply, reply_grammar
from refserver.constrain.matcher import (
    CompiledConstraint,
    ConstraintError,
    SequenceMatcher,
    compile_constraint,
)

__all__ = [
    "CompiledConstraint",
    "ConstraintError",
    "Reply",
    "SequenceMatcher",
    "compile_constraint",
    "reply_grammar",
]
