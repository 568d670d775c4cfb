"""The split: parsing, validation messages and layer ranges (pure, no MLX)."""

import pytest

from refserver.split import PipelineSplit, SplitError, even_split

RANGES = [
    # (split text, world, layers, expected ranges by rank)
    ("22,40", 2, 62, [range(40, 62), range(0, 40)]),
    ("40,22", 2, 62, [range(22, 62), range(0, 22)]),
    ("1,3", 2, 4, [range(3, 4), range(0, 3)]),
    ("2,1,1", 3, 4, [range(2, 4), range(1, 2), range(0, 1)]),
    ("1,1,1,1", 4, 4, [range(3, 4), range(2, 3), range(1, 2), range(0, 1)]),
    (" 4 ", 1, 4, [range(0, 4)]),
    (None, 3, 62, [range(41, 62), range(20, 41), range(0, 20)]),
    ("", 2, 5, [range(2, 5), range(0, 2)]),
]


@pytest.mark.parametrize("text,world,layers,expected", RANGES)
def test_layer_ranges(text, world, layers, expected):
    split = PipelineSplit.resolve(text, world, layers)
    assert [split.layer_range(r) for r in range(world)] == expected
    covered = sorted(i for r in range(world) for i in split.layer_range(r))
    assert covered == list(range(layers)), "every layer runs exactly once"


@pytest.mark.parametrize("world,layers", [(w, n) for w in (1, 2, 3, 4) for n in (4, 5, 7, 62)])
def test_even_split_runs_every_layer_and_favours_low_ranks(world, layers):
    counts = even_split(world, layers)
    assert sum(counts) == layers and min(counts) >= 1
    assert list(counts) == sorted(counts, reverse=True), "extra layers go to the lowest ranks"
    assert max(counts) - min(counts) <= 1


BAD = [
    # (text, world, layers, words the message must contain)
    ("22", 2, 62, ["MINIMAX_PIPELINE_SPLIT", "expected 2 entries", "got 1"]),
    ("20,20,22", 2, 62, ["expected 2 entries", "got 3", "'20,20,22'"]),
    ("22,41", 2, 62, ["sum to num_hidden_layers=62", "sum to 63"]),
    ("0,62", 2, 62, ["at least 1 layer", "got 0"]),
    ("-2,64", 2, 62, ["at least 1 layer", "got -2"]),
    ("a,b", 2, 62, ["integer", "'a'"]),
    ("22;40", 2, 62, ["integer", "'22;40'"]),
    ("2.5,1.5", 2, 4, ["integer", "'2.5'"]),
    ("22,,40", 2, 62, ["integer", "''"]),
]


@pytest.mark.parametrize("text,world,layers,words", BAD)
def test_bad_splits_name_variable_rule_and_value(text, world, layers, words):
    with pytest.raises(SplitError) as info:
        PipelineSplit.resolve(text, world, layers)
    message = str(info.value)
    assert "MINIMAX_PIPELINE_SPLIT" in message
    for word in words:
        assert word in message


def test_more_ranks_than_layers_is_refused():
    with pytest.raises(SplitError, match="at least 1 layer"):
        even_split(5, 4)
